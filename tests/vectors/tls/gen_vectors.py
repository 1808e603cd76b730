#!/usr/bin/env python3
"""gen_vectors.py - writes the TLS classifier vectors (*.vec in this
directory): the replays of the recorded connections (recorded/, see its
README.md) and the hand-made cases, built here from a small TLS message
builder so every length in them is right unless a case breaks it on purpose.

Run it after changing a case or re-recording; it rewrites every *.vec it
owns (the ones starting with "rec_" or "gen_") and leaves others alone.
The facts in "has:" lines are what test_tls.c's describe() prints:
  ClientHello:  sni=<name or -> maxver=<hex> alpn=<first or -> early=<0|1>
  ServerHello:  version=<hex> cipher=<hex> hrr=<0|1> resumed=<0|1>
  Certificate:  chain=<n>
"""
import glob
import os
import random
import ssl
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v):
    return struct.pack(">B", v)


def u16(v):
    return struct.pack(">H", v)


def u24(v):
    return struct.pack(">I", v)[1:]


def u32(v):
    return v.to_bytes(4, "big")


def vec8(b):
    return u8(len(b)) + b


def vec16(b):
    return u16(len(b)) + b


def vec24(b):
    return u24(len(b)) + b


def ext(t, data):
    return u16(t) + vec16(data)


def record(ctype, payload, ver=0x0303, length=None):
    return u8(ctype) + u16(ver) + u16(len(payload) if length is None else length) + payload


def hs(htype, body, length=None):
    return u8(htype) + u24(len(body) if length is None else length) + body


# ---- ClientHello -----------------------------------------------------------

def sni_ext(host, name_type=0, list_len=None, name_len=None):
    name = host if isinstance(host, bytes) else host.encode()
    entry = u8(name_type) + u16(len(name) if name_len is None else name_len) + name
    lst = u16(len(entry) if list_len is None else list_len) + entry
    return ext(0, lst)


def alpn_ext(*protos):
    return ext(16, vec16(b"".join(vec8(p.encode()) for p in protos)))


def versions_ext(*versions):
    return ext(43, vec8(b"".join(u16(v) for v in versions)))


X25519_KEY = bytes(range(32))
KEY_SHARE = ext(51, vec16(u16(0x001d) + vec16(X25519_KEY)))

BASE_EXTS = [
    sni_ext("www.example.com"),
    ext(0xff01, b"\x00"),                                   # renegotiation_info
    ext(10, vec16(u16(0x001d) + u16(0x0017))),               # supported_groups
    ext(11, vec8(b"\x00")),                                  # ec_point_formats
    ext(35, b""),                                            # session_ticket
    alpn_ext("h2", "http/1.1"),
    ext(23, b""),                                            # extended_master_secret
    ext(13, vec16(u16(0x0403) + u16(0x0804) + u16(0x0401))),  # signature_algorithms
    versions_ext(0x0304, 0x0303),
    ext(45, vec8(b"\x01")),                                  # psk_key_exchange_modes
    KEY_SHARE,
]
BASE_CIPHERS = [0x1301, 0x1302, 0xc02f, 0xc02b, 0x009c]
SID = bytes(range(0x20, 0x40))


def client_hello(version=0x0303, sid=SID, ciphers=None, comp=b"\x00", exts=None,
                 sid_len=None, cs_len=None, comp_len=None, ext_len=None, hs_len=None,
                 no_exts=False):
    """The ClientHello handshake message; *_len override a length field."""
    ciphers = BASE_CIPHERS if ciphers is None else ciphers
    exts = BASE_EXTS if exts is None else exts
    cs = b"".join(u16(c) for c in ciphers) if isinstance(ciphers, list) else ciphers
    blob = b"".join(exts)
    body = (u16(version) + bytes(range(32)) +
            u8(len(sid) if sid_len is None else sid_len) + sid +
            u16(len(cs) if cs_len is None else cs_len) + cs +
            u8(len(comp) if comp_len is None else comp_len) + comp)
    if not no_exts:
        body += u16(len(blob) if ext_len is None else ext_len) + blob
    return hs(1, body, hs_len)


CH = client_hello()
CH_REC = record(22, CH, 0x0301)


# ---- server flights -----------------------------------------------------------

HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def server_hello(version=0x0303, sid=b"\x11" * 32, cipher=0xc02f, comp=0, exts=None,
                 rnd=None):
    exts = [ext(0xff01, b"\x00"), ext(23, b""), ext(11, vec8(b"\x00"))] if exts is None else exts
    body = (u16(version) + (rnd or bytes(range(100, 132))) + vec8(sid) + u16(cipher) + u8(comp) +
            vec16(b"".join(exts)))
    return hs(2, body)


SH12 = server_hello()
SH13 = server_hello(sid=SID, cipher=0x1301,
                    exts=[ext(43, u16(0x0304)), ext(51, u16(0x001d) + vec16(X25519_KEY))])
HRR = server_hello(sid=SID, cipher=0x1301, rnd=HRR_RANDOM,
                   exts=[ext(43, u16(0x0304)), ext(51, u16(0x0017))])


def der(name):
    with open(os.path.join(HERE, "certs", name + ".pem")) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


LEAF, INTER = der("server"), der("int")
CERT_MSG = hs(11, vec24(vec24(LEAF) + vec24(INTER)))
SKE = hs(12, b"\x03\x00\x1d" + vec8(bytes(32)) + u16(0x0403) + vec16(bytes(70)))
SHD = hs(14, b"")
CCS = record(20, b"\x01")
APP = record(23, bytes(range(48)))


def fin12():
    """An encrypted TLS 1.2 Finished record."""
    return record(22, bytes(range(40)))


# ---- vector files -----------------------------------------------------------------

def seg_line(direction, data):
    return "%shex %s" % (direction, data.hex())


def write(name, comment, expect, segments, reason=None, events=None, has=(), finish=False):
    lines = ["# " + l for l in comment.strip().splitlines()]
    lines.append("expect: " + expect)
    if reason:
        lines.append("reason: " + reason)
    if events:
        lines.append("events: " + events)
    for h in has:
        lines.append("has: " + h)
    if finish:
        lines.append("finish: yes")
    for d, data in segments:
        lines.append(seg_line(d, data) if isinstance(data, bytes) else "%sfile %s" % (d, data))
    with open(os.path.join(HERE, name + ".vec"), "w") as f:
        f.write("\n".join(lines) + "\n")


def recorded():
    """One vector per recorded connection."""
    facts = {
        # scenario: (events, has...)
        "s_client_tls12": ("1,2,3", "sni=www.portcullis.test maxver=0303 alpn=- early=0",
                           "version=0303 cipher=c02c hrr=0 resumed=0", "chain=2"),
        "s_client_srv12": ("1,2,3", "sni=www.portcullis.test maxver=0304",
                           "version=0303 cipher=c02c", "chain=2"),
        "s_client_tls13": ("1,2", "sni=www.portcullis.test maxver=0304 alpn=- early=0",
                           "version=0304 cipher=1302 hrr=0 resumed=0"),
        "s_client_hrr": ("1,2", "sni=www.portcullis.test maxver=0304",
                         "version=0304 cipher=1302 hrr=1 resumed=0"),
        "s_client_resume12": ("1,2", "sni=www.portcullis.test maxver=0304",
                              "version=0303 cipher=c02c hrr=0 resumed=1"),
        "s_client_early13": ("1,2", "sni=www.portcullis.test maxver=0304 alpn=- early=1",
                             "version=0304 cipher=1302 hrr=0 resumed=0"),
        "curl_tls12": ("1,2,3", "sni=www.portcullis.test maxver=0303 alpn=h2",
                       "version=0303 cipher=c02c", "chain=2"),
        "curl_tls13": ("1,2", "sni=www.portcullis.test maxver=0304 alpn=h2",
                       "version=0304 cipher=1302"),
        "curl_srv12": ("1,2,3", "sni=www.portcullis.test maxver=0304 alpn=h2",
                       "version=0303 cipher=c02c", "chain=2"),
        "wget_tls13": ("1,2", "sni=localhost maxver=0304", "version=0304"),
        "wget_srv12": ("1,2,3", "sni=localhost maxver=0304", "version=0303", "chain=2"),
        "python_urllib13": ("1,2", "sni=localhost maxver=0304 alpn=- early=0",
                            "version=0304 cipher=1302"),
        "python_ssl12": ("1,2,3", "sni=www.portcullis.test maxver=0303",
                         "version=0303 cipher=c02c", "chain=2"),
        "selfsigned_tls12": ("1,2,3", "sni=selfsigned.portcullis.test maxver=0304",
                             "version=0303", "chain=1"),
        "selfsigned_tls13": ("1,2", "sni=selfsigned.portcullis.test maxver=0304",
                             "version=0304"),
    }
    for scen, (events, *has) in sorted(facts.items()):
        with open(os.path.join(HERE, "recorded", scen, "segments.txt")) as f:
            segs = [(l[0], l[5:].strip()) for l in f.read().splitlines() if l]
        write("rec_" + scen,
              "Recorded connection %s (see recorded/README.md): a real client and\n"
              "openssl s_server, both directions in the order they crossed the relay." % scen,
              "conforms", segs, events=events, has=has, finish=True)


def generated():
    rnd = random.Random(20240611)
    cases = []

    def case(name, comment, expect, segs, **kw):
        cases.append(name)
        write("gen_" + name, comment, expect, segs, **kw)

    # -- not TLS at all
    junk = bytes([0x9c]) + bytes(rnd.randrange(256) for _ in range(255))
    case("random_bytes", "256 random bytes from the client.", "violates", [(">", junk)],
         reason="tls-record-type: 156")
    junk2 = bytes(rnd.randrange(256) for _ in range(300))
    case("random_bytes_s2c", "Random bytes from the server before any ClientHello.", "violates",
         [("<", junk2)], reason="tls-record-type: %d" % junk2[0])
    case("http_on_443", "Plain HTTP to port 443.", "violates",
         [(">", b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")],
         reason="tls-record-type: 71")
    case("sslv2_hello", "An SSLv2-format (compatible) ClientHello.", "violates",
         [(">", bytes.fromhex("802e0103010015000000100700c0050080030080010080060040040080020080")
           + bytes(16))], reason="tls-record-type: SSLv2-format ClientHello")
    case("heartbeat_first", "A heartbeat record as the first record.", "violates",
         [(">", record(24, b"\x01\x00\x10" + bytes(16)))],
         reason="tls-record-type: heartbeat")
    case("heartbeat_after_hello", "A heartbeat record after a valid ClientHello.", "violates",
         [(">", CH_REC), (">", record(24, b"\x01\x00\x10" + bytes(16)))],
         reason="tls-record-type: heartbeat", events="1")

    # -- a TLS-looking header, then junk (what Skype does on 443)
    body = bytes(rnd.randrange(256) for _ in range(64))
    case("header_then_junk", "A handshake record header and 64 random bytes.", "violates",
         [(">", record(22, b"\x07" + body[1:], 0x0301))],
         reason="tls-client-hello: first handshake message has type 7")
    case("header_then_junk_ch", "A handshake record whose ClientHello header is followed by "
         "junk.", "violates",
         [(">", record(22, hs(1, bytes([3, 1]) + body), 0x0301))], reason="tls-client-hello")
    case("appdata_first", "An application_data record with junk as the first record (the old "
         "Skype handshake).", "violates",
         [(">", record(23, body, 0x0301))], reason="tls-not-handshake: application_data record")
    case("alert_first", "An alert as the first record.", "violates",
         [(">", record(21, b"\x02\x28"))], reason="tls-not-handshake")

    # -- a valid ClientHello, then junk
    case("hello_then_bad_version", "A valid ClientHello, then a type-23 record with version "
         "0x0200.", "violates",
         [(">", CH_REC), (">", record(23, body, 0x0200))],
         reason="tls-record-version: 0x0200", events="1",
         has=["sni=www.example.com maxver=0304 alpn=h2 early=0"])
    case("hello_then_version_0305", "A valid ClientHello, then a handshake record with version "
         "0x0305.", "violates", [(">", CH_REC), (">", record(22, body, 0x0305))],
         reason="tls-record-version: 0x0305", events="1")
    case("hello_then_not_a_record", "A valid ClientHello, then bytes that are not a record.",
         "violates", [(">", CH_REC), (">", b"\x00\x01\x02\x03\x04\x05")],
         reason="tls-record-type: 0", events="1")
    case("hello_then_appdata", "A valid ClientHello without early_data, then application "
         "data.", "violates", [(">", CH_REC), (">", APP)],
         reason="tls-unexpected-message: client application data", events="1")
    case("hello_then_second_message", "A ClientHello and a second handshake message in the "
         "same record.", "violates", [(">", record(22, CH + hs(16, vec8(bytes(32))), 0x0301))],
         reason="tls-unexpected-message: client handshake type 16", events="1")
    case("hello_then_handshake_record", "A ClientHello, then another handshake record before "
         "the ServerHello.", "violates", [(">", CH_REC), (">", record(22, hs(1, b"")))],
         reason="tls-unexpected-message: plaintext handshake record from the client",
         events="1")

    # -- record lengths
    case("record_too_large", "A handshake record of 18433 bytes (> 2^14 + 2048).", "violates",
         [(">", u8(22) + u16(0x0301) + u16(18433))],
         reason="tls-record-length: 18433 > 18432")
    case("plaintext_record_too_large", "A plaintext handshake record of 16385 bytes.",
         "violates", [(">", u8(22) + u16(0x0301) + u16(16385))],
         reason="tls-record-length: 16385 > 16384")
    case("empty_handshake_record", "A zero-length handshake record.", "violates",
         [(">", record(22, b"", 0x0301))], reason="tls-record-length: empty handshake record")
    case("empty_alert_record", "A zero-length alert record after the ClientHello.", "violates",
         [(">", CH_REC), (">", record(21, b""))], reason="tls-record-length: empty alert",
         events="1")
    case("handshake_too_large", "A ClientHello claiming 70000 bytes.", "violates",
         [(">", record(22, hs(1, bytes(100), length=70000), 0x0301))],
         reason="tls-handshake-too-large")

    # -- ClientHello length fields off by one
    off = [
        ("hs_len_minus1", dict(hs_len=len(CH) - 4 - 1), "tls-client-hello: extensions overrun"),
        ("sid_len_plus1", dict(sid_len=33), "tls-client-hello: session_id length 33 > 32"),
        ("sid_len_minus1", dict(sid_len=31), "tls-client-hello: cipher_suites overrun"),
        ("cs_len_plus1", dict(cs_len=len(BASE_CIPHERS) * 2 + 1),
         "tls-client-hello: cipher_suites length 11"),
        ("cs_len_minus1", dict(cs_len=len(BASE_CIPHERS) * 2 - 1),
         "tls-client-hello: cipher_suites length 9"),
        ("cs_len_plus2", dict(cs_len=len(BASE_CIPHERS) * 2 + 2), "tls-client-hello"),
        ("comp_len_plus1", dict(comp_len=2), "tls-client-hello"),
        ("comp_len_zero", dict(comp_len=0), "tls-client-hello: compression_methods lack null"),
        ("ext_len_plus1", dict(ext_len=len(b"".join(BASE_EXTS)) + 1),
         "tls-client-hello: extensions overrun"),
        ("ext_len_minus1", dict(ext_len=len(b"".join(BASE_EXTS)) - 1),
         "tls-client-hello: 1 bytes after the extensions"),
    ]
    for name, kw, reason in off:
        case("ch_" + name, "ClientHello with %s." % name.replace("_", " "), "violates",
             [(">", record(22, client_hello(**kw), 0x0301))], reason=reason)
    # The handshake length one too long: the record holds one more (junk) byte.
    ch = client_hello(hs_len=len(CH) - 4 + 1) + b"\x00"
    case("ch_hs_len_plus1", "ClientHello whose handshake length counts a junk byte after it.",
         "violates", [(">", record(22, ch, 0x0301))],
         reason="tls-client-hello: 1 bytes after the extensions")
    # Record one byte longer than the ClientHello: a handshake header is cut.
    case("ch_record_len_plus1", "A record one byte longer than its ClientHello; the stream "
         "ends there.", "violates", [(">", record(22, CH + b"\x01", 0x0301))],
         reason="tls-truncated", events="1", finish=True)
    case("ch_record_len_minus1", "A record one byte shorter than its ClientHello, then a new "
         "record header.", "violates",
         [(">", record(22, CH[:-1], 0x0301) + CH[-1:] + b"\x03\x03\x00\x01\x00")],
         reason="tls-record-type: 31")
    case("ch_truncated", "Half a ClientHello: more is needed.", "need_more",
         [(">", CH_REC[:100])])
    case("ch_truncated_finish", "Half a ClientHello, then the client half-closes.", "violates",
         [(">", CH_REC[:100])], reason="tls-truncated", finish=True)

    exts = list(BASE_EXTS)
    first_ext = exts[1]  # renegotiation_info
    exts[1] = first_ext[:2] + u16(2) + first_ext[4:]
    case("ch_ext_entry_len_plus1", "An extension whose length runs one byte into the next.",
         "violates", [(">", record(22, client_hello(exts=exts), 0x0301))],
         reason="tls-client-hello")
    exts = list(BASE_EXTS)
    exts[-1] = KEY_SHARE[:2] + u16(len(KEY_SHARE) - 4 + 1) + KEY_SHARE[4:]
    case("ch_last_ext_len_plus1", "The last extension's length runs past the block.",
         "violates", [(">", record(22, client_hello(exts=exts), 0x0301))],
         reason="tls-client-hello: extension at")
    exts = list(BASE_EXTS)
    exts[0] = sni_ext("www.example.com", list_len=19)
    case("ch_sni_list_len_plus1", "server_name_list length one too long.", "violates",
         [(">", record(22, client_hello(exts=exts), 0x0301))], reason="tls-client-hello: bad sni")
    exts[0] = sni_ext("www.example.com", name_len=14)
    case("ch_sni_name_len_minus1", "host_name length one too short.", "violates",
         [(">", record(22, client_hello(exts=exts), 0x0301))], reason="tls-client-hello: bad sni")

    # -- ClientHello content
    case("ch_duplicate_extension", "The same extension (supported_groups) twice.", "violates",
         [(">", record(22, client_hello(exts=BASE_EXTS + [BASE_EXTS[2]]), 0x0301))],
         reason="tls-client-hello: duplicate extension 0x000a")
    case("ch_no_null_compression", "Compression methods without null.", "violates",
         [(">", record(22, client_hello(comp=b"\x01"), 0x0301))],
         reason="tls-client-hello: compression_methods lack null")
    case("ch_odd_cipher_list", "A cipher_suites list of odd length.", "violates",
         [(">", record(22, client_hello(ciphers=b"\x13\x01\xc0"), 0x0301))],
         reason="tls-client-hello: cipher_suites length 3")
    case("ch_no_ciphers", "An empty cipher_suites list.", "violates",
         [(">", record(22, client_hello(ciphers=[]), 0x0301))],
         reason="tls-client-hello: cipher_suites length 0")
    case("ch_bad_legacy_version", "legacy_version 0x0200.", "violates",
         [(">", record(22, client_hello(version=0x0200), 0x0301))],
         reason="tls-client-hello: legacy_version 0x0200")
    case("ch_psk_not_last", "pre_shared_key followed by another extension.", "violates",
         [(">", record(22, client_hello(exts=BASE_EXTS[:-1] + [
             ext(41, vec16(vec16(b"id") + bytes(4)) + vec16(vec8(bytes(32)))), KEY_SHARE]),
             0x0301))], reason="tls-client-hello: pre_shared_key is not the last extension")
    case("ch_versions_odd", "supported_versions with an odd list length.", "violates",
         [(">", record(22, client_hello(exts=BASE_EXTS[:8] + [ext(43, b"\x03\x03\x04\x03")] +
                                        BASE_EXTS[9:]), 0x0301))],
         reason="tls-client-hello: malformed supported_versions")
    case("ch_tls10_no_extensions", "A TLS 1.0 ClientHello without any extensions conforms.",
         "conforms", [(">", record(22, client_hello(version=0x0301, sid=b"", no_exts=True),
                                   0x0301))],
         events="1", has=["sni=- maxver=0301 alpn=- early=0"])
    case("ch_grease", "GREASE cipher, extension and version values are accepted.", "conforms",
         [(">", record(22, client_hello(ciphers=[0x3a3a] + BASE_CIPHERS, exts=[
             ext(0x1a1a, b"")] + BASE_EXTS[:8] + [versions_ext(0x7a7a, 0x0304, 0x0303)] +
             BASE_EXTS[9:] + [ext(0xfafa, b"\x00")]), 0x0301))],
         events="1", has=["sni=www.example.com maxver=0304"])

    # -- SNI
    def sni_case(name, host, expect, reason=None, has=(), **kw):
        exts = [sni_ext(host, **kw)] + BASE_EXTS[1:]
        case("sni_" + name, "server_name %r." % host, expect,
             [(">", record(22, client_hello(exts=exts), 0x0301))], reason=reason,
             events="1" if expect == "conforms" else None, has=has)
    sni_case("upper_case", "WWW.Example.COM", "conforms", has=["sni=www.example.com "])
    sni_case("underscore_digits", "a_b-1.example.com", "conforms", has=["sni=a_b-1.example.com "])
    sni_case("space", "www.exa mple.com", "violates", "tls-client-hello: bad sni: byte 0x20")
    sni_case("trailing_dot", "www.example.com.", "violates",
             "tls-client-hello: bad sni: trailing dot")
    sni_case("empty_label", "www..example.com", "violates",
             "tls-client-hello: bad sni: empty label")
    sni_case("utf8", "www.ex\u00e4mple.com".encode(), "violates",
             "tls-client-hello: bad sni: byte 0xc3")
    sni_case("nul", b"www.example.com\x00.evil.com", "violates",
             "tls-client-hello: bad sni: byte 0x00")
    sni_case("long_label", "a" * 64 + ".com", "violates",
             "tls-client-hello: bad sni: label longer than 63")
    sni_case("name_type_1", "www.example.com", "violates", "tls-client-hello: bad sni: name_type 1",
             name_type=1)
    sni_case("empty", "", "violates", "tls-client-hello: bad sni: length 0")
    two = ext(0, vec16(b"\x00" + vec16(b"a.example") + b"\x00" + vec16(b"b.example")))
    case("sni_two_host_names", "Two host_name entries.", "violates",
         [(">", record(22, client_hello(exts=[two] + BASE_EXTS[1:]), 0x0301))],
         reason="tls-client-hello: bad sni: two host_name entries")

    # -- reassembly
    parts = [CH[:3], CH[3:50], CH[50:51], CH[51:]]
    case("fragmented_hello", "A ClientHello in four records, the first holding only part of "
         "the handshake header.", "conforms",
         [(">", b"".join(record(22, p, 0x0301) for p in parts))], events="1",
         has=["sni=www.example.com maxver=0304 alpn=h2"])
    case("fragmented_hello_alert_between", "An alert between two fragments of a ClientHello.",
         "violates", [(">", record(22, CH[:40], 0x0301) + record(21, b"\x02\x28"))],
         reason="tls-unexpected-message: alert record inside a handshake message")

    # -- TLS 1.2 server flights
    flight = [(">", CH_REC)]
    case("tls12_one_record_flight", "A TLS 1.2 server flight in one record: ServerHello, "
         "Certificate, ServerKeyExchange, ServerHelloDone; then the client flight and "
         "application data both ways.", "conforms",
         flight + [("<", record(22, SH12 + CERT_MSG + SKE + SHD)),
                   (">", record(22, hs(16, vec8(bytes(32)))) + CCS + fin12()),
                   ("<", CCS + fin12()), (">", APP), ("<", APP + record(23, b""))],
         events="1,2,3", has=["version=0303 cipher=c02f hrr=0 resumed=0", "chain=2"],
         finish=True)
    cert_rec = CERT_MSG
    case("tls12_certificate_fragmented", "The Certificate message split over three records.",
         "conforms", flight + [("<", record(22, SH12)),
                               ("<", record(22, cert_rec[:2]) + record(22, cert_rec[2:700])),
                               ("<", record(22, cert_rec[700:]) + record(22, SHD))],
         events="1,2,3", has=["chain=2"])
    case("tls12_anon_ske", "An anonymous TLS 1.2 server: ServerHello then "
         "ServerKeyExchange.", "violates",
         flight + [("<", record(22, SH12 + SKE + SHD))], reason="tls-no-certificate",
         events="1,2")
    case("tls12_anon_done", "A TLS 1.2 server that goes from ServerHello to "
         "ServerHelloDone.", "violates",
         flight + [("<", record(22, SH12)), ("<", record(22, SHD))],
         reason="tls-no-certificate", events="1,2")
    case("tls12_ccs_without_resumption", "A TLS 1.2 server that sends change_cipher_spec after "
         "a ServerHello that did not resume the session.", "violates",
         flight + [("<", record(22, SH12) + CCS)], reason="tls-no-certificate", events="1,2")
    case("tls12_resumed", "A resumed TLS 1.2 session: the ServerHello echoes the session id; "
         "no Certificate.", "conforms",
         flight + [("<", record(22, server_hello(sid=SID)) + CCS + fin12()),
                   (">", CCS + fin12() + APP)],
         events="1,2", has=["resumed=1"])
    ticket_flight = [(">", record(22, client_hello(sid=b"", exts=[e for e in BASE_EXTS if e[:2] != b"\x00\x23"] +
                                  [ext(35, b"\x5a" * 96)]),
                                  0x0301))]
    case("tls12_ticket_resumed", "RFC 5077 3.4: a client offers a session ticket with an empty "
         "session_id; the server resumes without an id to echo (ServerHello, "
         "change_cipher_spec, Finished), no Certificate.", "conforms",
         ticket_flight + [("<", record(22, server_hello(sid=b"", exts=[])) + CCS + fin12()),
                          (">", CCS + fin12() + APP)],
         events="1,2")
    case("tls12_ticket_resumed_new_ticket", "The same, with a NewSessionTicket before the "
         "server's change_cipher_spec.", "conforms",
         ticket_flight + [("<", record(22, server_hello(sid=b"", exts=[ext(35, b"")]) +
                                  hs(4, u32(300) + vec16(b"\x01" * 64))) + CCS + fin12()),
                          (">", CCS + fin12() + APP)],
         events="1,2")
    case("tls12_ticket_refused_full_handshake", "A ticket with an empty session_id that the "
         "server does not accept: the full handshake with its Certificate follows.", "conforms",
         ticket_flight + [("<", record(22, server_hello(sid=b"", exts=[]) + CERT_MSG + SKE + SHD))],
         events="1,2,3", has=["chain=2"])
    case("tls12_ticket_anon", "A ticket with an empty session_id, and a server that neither "
         "resumes nor sends a Certificate (ServerKeyExchange first).", "violates",
         ticket_flight + [("<", record(22, server_hello(sid=b"", exts=[]) + SKE + SHD))],
         reason="tls-no-certificate", events="1,2")
    case("tls12_resumed_then_certificate", "A ServerHello that resumes, then a Certificate.",
         "violates", flight + [("<", record(22, server_hello(sid=SID) + CERT_MSG))],
         reason="tls-unexpected-message", events="1,2")
    case("tls12_empty_certificate", "A Certificate message with no certificates.", "violates",
         flight + [("<", record(22, SH12 + hs(11, vec24(b""))))],
         reason="tls-certificate: empty certificate_list", events="1,2")
    bad_cert = hs(11, u24(len(LEAF) + 3 + 1) + vec24(LEAF))
    case("tls12_certificate_list_len", "certificate_list length one more than the message "
         "holds.", "violates", flight + [("<", record(22, SH12 + bad_cert))],
         reason="tls-certificate", events="1,2")
    bad_cert = hs(11, vec24(u24(len(LEAF) + 1) + LEAF))
    case("tls12_certificate_entry_len", "A certificate whose length runs past the list.",
         "violates", flight + [("<", record(22, SH12 + bad_cert))],
         reason="tls-certificate: certificate at", events="1,2")
    case("tls12_appdata_before_ccs", "Server application data before its change_cipher_spec.",
         "violates", flight + [("<", record(22, SH12 + CERT_MSG + SHD) + APP)],
         reason="tls-unexpected-message: server application data", events="1,2,3")
    case("tls12_done_with_body", "A ServerHelloDone with a body.", "violates",
         flight + [("<", record(22, SH12 + CERT_MSG + hs(14, b"\x00")))],
         reason="tls-unexpected-message: ServerHelloDone of 1 bytes", events="1,2,3")
    case("tls12_ccs_value", "A change_cipher_spec record holding 0x02.", "violates",
         flight + [("<", record(22, SH12 + CERT_MSG + SHD)),
                   (">", record(22, hs(16, vec8(bytes(32)))) + record(20, b"\x02"))],
         reason="tls-change-cipher-spec: value 2", events="1,2,3")
    case("tls12_empty_appdata", "Zero-length application data records are allowed in TLS "
         "1.2.", "conforms",
         flight + [("<", record(22, SH12 + CERT_MSG + SHD)),
                   (">", record(22, hs(16, vec8(bytes(32)))) + CCS + fin12()),
                   ("<", CCS + fin12()), (">", record(23, b"") + APP)], events="1,2,3")
    case("tls12_alert_reply", "The server answers the ClientHello with a fatal alert.",
         "conforms", flight + [("<", record(21, b"\x02\x28"))], events="1", finish=True)
    case("tls12_alert_level", "An alert with level 3.", "violates",
         flight + [("<", record(21, b"\x03\x28"))], reason="tls-alert: level 3", events="1")
    case("tls12_alert_length", "A 3-byte plaintext alert record.", "violates",
         flight + [("<", record(21, b"\x02\x28\x00"))], reason="tls-alert", events="1")
    case("tls12_encrypted_junk", "After both change_cipher_specs only framing is checked: "
         "encrypted-looking records of every type pass, a bad header does not.", "violates",
         flight + [("<", record(22, SH12 + CERT_MSG + SHD)),
                   (">", record(22, hs(16, vec8(bytes(32)))) + CCS + fin12()),
                   ("<", CCS + fin12() + record(21, bytes(30)) + record(20, bytes(30))),
                   ("<", APP + b"\x17\x03\x03\x48\x01")],
         reason="tls-record-length: 18433", events="1,2,3")

    # -- ServerHello content
    case("sh_cipher_not_offered", "A ServerHello choosing a cipher the client did not offer.",
         "violates", flight + [("<", record(22, server_hello(cipher=0x0005)))],
         reason="tls-server-hello: cipher_suite 0x0005 was not offered", events="1")
    case("sh_unsolicited_extension", "A ServerHello with an extension the client did not "
         "offer.", "violates",
         flight + [("<", record(22, server_hello(exts=[ext(0x0015, b"\x00")])))],
         reason="tls-server-hello: extension 0x0015 was not offered", events="1")
    case("sh_duplicate_extension", "A ServerHello with an extension twice.", "violates",
         flight + [("<", record(22, server_hello(exts=[ext(23, b""), ext(23, b"")])))],
         reason="tls-server-hello: duplicate extension 0x0017", events="1")
    case("sh_version_above_client", "A ServerHello choosing TLS 1.2 for a TLS 1.0 client.",
         "violates", [(">", record(22, client_hello(version=0x0301, no_exts=True), 0x0301)),
                      ("<", record(22, server_hello(exts=[])))],
         reason="tls-server-hello: version 0x0303 above", events="1")
    case("sh_before_hello", "The server speaks first.", "violates",
         [("<", record(22, SH12))],
         reason="tls-unexpected-message: server sent data before the ClientHello")
    case("sh_wrong_first_message", "The server answers with a Certificate, no ServerHello.",
         "violates", flight + [("<", record(22, CERT_MSG))],
         reason="tls-unexpected-message: server handshake type 11 before the ServerHello",
         events="1")

    # -- TLS 1.3
    enc = [record(23, bytes(range(200))), record(23, bytes(60))]
    case("tls13_flow", "A TLS 1.3 handshake: ServerHello, compatibility change_cipher_spec, "
         "encrypted records both ways, an alert.", "conforms",
         flight + [("<", record(22, SH13) + CCS + enc[0]), (">", CCS + enc[1]),
                   ("<", enc[0]), (">", record(21, b"\x01\x00"))],
         events="1,2", has=["version=0304 cipher=1301 hrr=0"], finish=True)
    case("tls13_plaintext_handshake_after_sh", "A TLS 1.3 server sending a plaintext handshake "
         "record after its ServerHello.", "violates",
         flight + [("<", record(22, SH13) + CCS + record(22, CERT_MSG))],
         reason="tls-unexpected-message: plaintext handshake record from the server",
         events="1,2")
    case("tls13_client_plaintext_after_sh", "A TLS 1.3 client sending a plaintext handshake "
         "record after the ServerHello.", "violates",
         flight + [("<", record(22, SH13)), (">", record(22, hs(20, bytes(32))))],
         reason="tls-unexpected-message: plaintext handshake record from the client",
         events="1,2")
    case("tls13_sh_plus_message", "A TLS 1.3 ServerHello with another plaintext message in the "
         "same record.", "violates", flight + [("<", record(22, SH13 + CERT_MSG))],
         reason="tls-unexpected-message: server handshake type 11", events="1,2")
    case("tls13_empty_appdata", "A zero-length TLS 1.3 application_data record.", "violates",
         flight + [("<", record(22, SH13) + record(23, b""))],
         reason="tls-record-length", events="1,2")
    case("tls13_record_overflow", "A TLS 1.3 record longer than 2^14 + 256.", "violates",
         flight + [("<", record(22, SH13) + u8(23) + u16(0x0303) + u16(16641))],
         reason="tls-record-length", events="1,2")
    case("tls13_two_ccs", "Two change_cipher_spec records from a TLS 1.3 server.", "violates",
         flight + [("<", record(22, SH13) + CCS + CCS)],
         reason="tls-unexpected-message: second change_cipher_spec", events="1,2")
    case("tls13_session_id_not_echoed", "A TLS 1.3 ServerHello that does not echo the session "
         "id.", "violates",
         flight + [("<", record(22, server_hello(sid=b"", cipher=0x1301, exts=[
             ext(43, u16(0x0304)), ext(51, u16(0x001d) + vec16(X25519_KEY))])))],
         reason="tls-server-hello: legacy_session_id_echo", events="1")
    case("tls13_not_offered", "A server selecting TLS 1.3 for a client that offered only "
         "1.2.", "violates",
         [(">", record(22, client_hello(exts=BASE_EXTS[:8] + [versions_ext(0x0303)] +
                                        BASE_EXTS[9:]), 0x0301)), ("<", record(22, SH13))],
         reason="tls-server-hello: selected version 0x0304 was not offered", events="1",
         has=["maxver=0303"])
    ch2 = client_hello(exts=BASE_EXTS[:-1] + [ext(51, vec16(u16(0x0017) + vec16(bytes(65))))])
    case("tls13_hrr", "HelloRetryRequest, compatibility change_cipher_spec both ways, second "
         "ClientHello, ServerHello.", "conforms",
         flight + [("<", record(22, HRR) + CCS), (">", CCS + record(22, ch2)),
                   ("<", record(22, SH13) + enc[0]), (">", enc[1])],
         events="1,2", has=["version=0304 cipher=1301 hrr=1"], finish=True)
    case("tls13_hrr_twice", "Two HelloRetryRequests.", "violates",
         flight + [("<", record(22, HRR)), (">", record(22, ch2)), ("<", record(22, HRR))],
         reason="tls-server-hello: second HelloRetryRequest", events="1")
    ch2_sni = client_hello(exts=[sni_ext("other.example.com")] + BASE_EXTS[1:])
    case("tls13_hrr_sni_changed", "The second ClientHello names another server.", "violates",
         flight + [("<", record(22, HRR)), (">", record(22, ch2_sni))],
         reason="tls-client-hello: server_name changed after HelloRetryRequest", events="1")
    case("tls13_hrr_server_continues", "A server that sends a handshake message after its "
         "HelloRetryRequest without waiting.", "violates",
         flight + [("<", record(22, HRR) + record(22, SH13))],
         reason="tls-unexpected-message: plaintext handshake record from the server",
         events="1")
    psk = ext(41, vec16(vec16(b"ticket") + bytes(4)) + vec16(vec8(bytes(32))))
    ch_early = client_hello(exts=BASE_EXTS + [ext(42, b""), psk])
    case("tls13_early_data", "0-RTT: ClientHello with early_data and a PSK, change_cipher_spec "
         "and application data before the ServerHello.", "conforms",
         [(">", record(22, ch_early, 0x0301) + CCS + enc[1]),
          ("<", record(22, server_hello(sid=SID, cipher=0x1301, exts=[
              ext(43, u16(0x0304)), ext(51, u16(0x001d) + vec16(X25519_KEY)),
              ext(41, u16(0))])) + CCS + enc[0])],
         events="1,2", has=["early=1"])
    case("tls13_early_data_without_psk", "early_data without a PSK: application data before "
         "the ServerHello is not allowed.", "violates",
         [(">", record(22, client_hello(exts=BASE_EXTS + [ext(42, b"")]), 0x0301) + enc[1])],
         reason="tls-unexpected-message: client application data", events="1")
    # -- rarer checks
    psk2 = ext(41, vec16(vec16(b"a") + bytes(4) + vec16(b"b") + bytes(4)) +
               vec16(vec8(bytes(32))))
    case("ch_psk_binder_count", "Two PSK identities but one binder.", "violates",
         [(">", record(22, client_hello(exts=BASE_EXTS + [psk2]), 0x0301))],
         reason="tls-client-hello: 2 PSK identities but 1 binders")
    ch2_early = client_hello(exts=BASE_EXTS[:-1] + [
        ext(51, vec16(u16(0x0017) + vec16(bytes(65)))), ext(42, b"")])
    case("tls13_hrr_early_data", "A second ClientHello that still offers early_data.",
         "violates", flight + [("<", record(22, HRR)), (">", record(22, ch2_early))],
         reason="tls-client-hello: early_data after HelloRetryRequest", events="1")
    case("tls13_hrr_cipher_changed", "A ServerHello whose cipher differs from the "
         "HelloRetryRequest's.", "violates",
         flight + [("<", record(22, HRR)), (">", record(22, ch2)),
                   ("<", record(22, server_hello(sid=SID, cipher=0x1302, exts=[
                       ext(43, u16(0x0304)), ext(51, u16(0x0017) + vec16(bytes(65)))])))],
         reason="tls-server-hello: cipher_suite 0x1302 differs", events="1")
    case("tls13_compression", "A TLS 1.3 ServerHello with compression_method 1.", "violates",
         [(">", record(22, client_hello(comp=b"\x01\x00"), 0x0301)),
          ("<", record(22, server_hello(sid=SID, cipher=0x1301, comp=1, exts=[
              ext(43, u16(0x0304)), ext(51, u16(0x001d) + vec16(X25519_KEY))])))],
         reason="tls-server-hello: TLS 1.3 with compression_method 1", events="1")
    many = hs(11, vec24(b"".join(vec24(b"\x30\x00") for _ in range(33))))
    case("tls12_too_many_certificates", "A Certificate message with 33 certificates.",
         "violates", flight + [("<", record(22, SH12 + many))],
         reason="tls-certificate: more than 32 certificates", events="1,2")
    server12 = [("<", record(22, SH12 + CERT_MSG + SHD))]
    case("tls12_client_ccs_early", "A client change_cipher_spec before its "
         "ClientKeyExchange.", "violates", flight + server12 + [(">", CCS)],
         reason="tls-unexpected-message: client change_cipher_spec", events="1,2,3")
    case("tls12_client_order", "CertificateVerify before ClientKeyExchange.", "violates",
         flight + server12 + [(">", record(22, hs(15, bytes(72))))],
         reason="tls-unexpected-message: client handshake type 15", events="1,2,3")
    case("tls12_client_auth", "A full TLS 1.2 client-authenticated flow: CertificateRequest, "
         "client Certificate, ClientKeyExchange, CertificateVerify.", "conforms",
         flight + [("<", record(22, SH12 + CERT_MSG + hs(13, b"\x01\x40" + vec16(u16(0x0403)) +
                                                        vec16(b"")) + SHD)),
                   (">", record(22, CERT_MSG + hs(16, vec8(bytes(32))) +
                                hs(15, u16(0x0403) + vec16(bytes(70)))) + CCS + fin12()),
                   ("<", record(22, hs(4, bytes(4) + vec16(bytes(100)))) + CCS + fin12())],
         events="1,2,3", finish=True)
    case("tls12_resumed_extra_server_message", "A resumed session in which the server sends "
         "a ServerKeyExchange.", "violates",
         flight + [("<", record(22, server_hello(sid=SID) + SKE))],
         reason="tls-unexpected-message: server handshake type 12 in a resumed session",
         events="1,2")
    return cases


def main():
    for f in glob.glob(os.path.join(HERE, "rec_*.vec")) + glob.glob(os.path.join(HERE, "gen_*.vec")):
        os.unlink(f)
    recorded()
    n = generated()
    print("%d generated vectors" % len(n))


if __name__ == "__main__":
    main()
