-- 003_firewall.sql - the rest of the firewall settings (docs/firewall.md,
-- docs/controller-policy.md), compiled with block_high_ports,
-- high_port_threshold and open_ports into the "firewall" part of every
-- office's policy document. As for every setting, NULL = inherit from the
-- scope above.
--
-- dns_resolvers: the addresses LAN DNS may go to ([]: none); NULL at every
--   scope: any resolver.
-- web_mode: 'transparent' (the node's own proxy takes LAN web traffic) or
--   'proxy' (the proxy runs elsewhere; only web_devices reach the web ports).
-- web_devices: the proxy hosts' prefixes, for web_mode 'proxy'.
-- log_drops_per_minute: dropped packets logged, at most this many a minute;
--   0: not logged.
--
-- Revisions written before this migration keep settings without these
-- fields; the store reads a missing field as NULL (inherit).

ALTER TABLE settings ADD COLUMN dns_resolvers TEXT
    CHECK (dns_resolvers IS NULL OR json_type(dns_resolvers) = 'array');
ALTER TABLE settings ADD COLUMN web_mode TEXT
    CHECK (web_mode IN ('transparent', 'proxy'));
ALTER TABLE settings ADD COLUMN web_devices TEXT
    CHECK (web_devices IS NULL OR json_type(web_devices) = 'array');
ALTER TABLE settings ADD COLUMN log_drops_per_minute INTEGER
    CHECK (log_drops_per_minute BETWEEN 0 AND 10000);
