-- absolute.lua - wrk script for the proxy benchmark.
--
-- With BENCH_ORIGIN=127.0.0.1:PORT in the environment every request names
-- the origin in absolute form ("GET http://127.0.0.1:PORT/ HTTP/1.1", Host
-- 127.0.0.1:PORT), sent on wrk's keep-alive connections to the proxy whose
-- address is on wrk's command line. Without it the requests are origin-form
-- (the direct run), so every run sends the same headers.
--
-- At the end one line "BENCHJSON {...}" gives the figures the script keeps:
-- requests/s, latency percentiles in microseconds, and every error count
-- (status = answers that were not 2xx/3xx: a proxy that blocks or fails must
-- not pass for a fast one).
local origin = os.getenv("BENCH_ORIGIN")
wrk.method = "GET"
if origin and origin ~= "" then
  wrk.path = "http://" .. origin .. "/"
  wrk.headers["Host"] = origin
end
wrk.headers["User-Agent"] = "wrk-bench"
wrk.headers["Accept"] = "*/*"

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"seconds":%.3f,"rps":%.1f,"lat_mean_us":%.1f,' ..
    '"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, secs, summary.requests / secs, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
