#!/usr/bin/env python3
"""mms_server.py - a minimal MS-MMSP (MMS over TCP) server written from the
specification ([MS-MMSP] v20170601, sections 2.2.2-2.2.4 and 3.2), only to
record what a real client sends. It is NOT real server software: every byte
it sends is ours. It serves one ASF file (made by ffmpeg) to one client:

  LinkViewerToMacConnect          -> LinkMacToViewerReportConnectedEX
  LinkViewerToMacFunnelInfo       -> LinkMacToViewerReportFunnelInfo
  LinkViewerToMacConnectFunnel    -> LinkMacToViewerReportConnectedFunnel
  LinkViewerToMacOpenFile         -> LinkMacToViewerReportOpenFile
  LinkViewerToMacReadBlock        -> LinkMacToViewerReportReadBlock, then the
                                     ASF file header as Data packets (2.2.2)
  LinkViewerToMacStreamSwitch     -> LinkMacToViewerReportStreamSwitch
  LinkViewerToMacStartPlaying     -> LinkMacToViewerReportStartedPlaying, the
                                     first two ASF data packets as Data packets
                                     with a LinkMacToViewerPing between them;
                                     after 2 s without a CloseFile the rest and
                                     LinkMacToViewerReportEndOfStream
  LinkViewerToMacPong, LinkViewerToMacCloseFile: no answer (close after the
                                     latter)

Usage: mms_server.py PORT FILE.asf
"""
import socket
import struct
import sys

SESSION_ID = 0xB00BFACE
SEAL = 0x20534D4D


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.seq = 0
        self.buf = b""

    def send_msg(self, mid, body):
        """One TcpMessageHeader packet holding one message (2.2.3, 2.2.4)."""
        msg = struct.pack("<II", 0, mid) + body
        msg += b"\0" * (-len(msg) % 8)
        msg = struct.pack("<I", len(msg) // 8) + msg[4:]
        length = len(msg) + 16
        hdr = struct.pack("<BBBBIII", 1, 0, 0, 0, SESSION_ID, length, SEAL)
        hdr += struct.pack("<IHHQ", length // 8, self.seq, 0, 0)
        self.seq = (self.seq + 1) & 0xFFFF
        self.sock.sendall(hdr + msg)

    def send_data(self, location, incarnation, flags, payload):
        """One Data packet (2.2.2)."""
        self.sock.sendall(struct.pack("<IBBH", location, incarnation, flags, len(payload) + 8)
                          + payload)

    def read(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                return None
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_msg(self):
        hdr = self.read(32)
        if hdr is None:
            return None, None
        rep, _, _, _, sid, length, seal = struct.unpack("<BBBBIII", hdr[:16])
        assert rep == 1 and sid == SESSION_ID and seal == SEAL, "not an MMS command"
        msg = self.read(length - 16)
        chunks, mid = struct.unpack("<II", msg[:8])
        return mid, msg


def utf16z(s):
    return (s + "\0").encode("utf-16-le")


def asf_parts(path):
    """ASF file header (Header Object + 50 bytes of the Data Object), packet
    size and the data packets of an ASF file ([ASF] 3.1, 3.2, 5.1)."""
    data = open(path, "rb").read()
    hsize = struct.unpack("<Q", data[16:24])[0]
    header = data[:hsize + 50]
    # File Properties Object: 8C41... GUID; Maximum Data Packet Size at +96.
    fp_guid = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
    i = data.find(fp_guid, 30, hsize)
    packet_size = struct.unpack("<I", data[i + 96:i + 100])[0]
    npackets = struct.unpack("<Q", data[hsize + 40:hsize + 48])[0]
    body = data[hsize + 50:hsize + 50 + npackets * packet_size]
    packets = [body[k:k + packet_size] for k in range(0, len(body), packet_size)]
    return header, packet_size, packets


def serve(conn, asf):
    header, packet_size, packets = asf_parts(asf)
    open_file_id = 1
    pending = None
    while True:
        conn.sock.settimeout(2.0 if pending else None)
        try:
            mid, msg = conn.recv_msg()
        except socket.timeout:
            inc, rest = pending
            pending = None
            for n, p in rest:
                conn.send_data(n, inc & 0xFF, n & 0xFF, p)
            conn.send_msg(0x0004001E, struct.pack("<II", 0, inc))  # EndOfStream
            continue
        if mid is None:
            return
        if mid == 0x00030001:  # Connect
            ver = utf16z("9.1.1.5000")
            body = struct.pack("<IIII", 0, 0xF0F0F0EF, 0x0004000B, 0x0003001C)
            body += struct.pack("<d", 1.0)
            body += struct.pack("<IIII", 1, 1, 0x8000, 0x00989680)
            body += struct.pack("<IIII", len(ver) // 2, 0, 0, 0) + ver
            conn.send_msg(0x00040001, body)
        elif mid == 0x00030018:  # FunnelInfo
            body = struct.pack("<IIIIIIIIII", 0, 0xF0F0F0EF, 8, 1, 0x10000, 0x1234, 0, 1, 0, 0)
            conn.send_msg(0x00040015, body)
        elif mid == 0x00030002:  # ConnectFunnel
            conn.send_msg(0x00040002, struct.pack("<III", 0, 0, 0) + utf16z("Funnel Of The Gods"))
        elif mid == 0x00030005:  # OpenFile
            inc = struct.unpack("<I", msg[8:12])[0]
            body = struct.pack("<IIIIII", 0, inc, open_file_id, 0, 0, 0x01800000)
            body += struct.pack("<dI", 2.0, 2) + b"\0" * 16
            body += struct.pack("<IQII", packet_size, len(packets), 64000, len(header))
            body += b"\0" * 36
            conn.send_msg(0x00040006, body)
        elif mid == 0x00030015:  # ReadBlock
            inc = struct.unpack("<I", msg[48:52])[0]
            conn.send_msg(0x00040011, struct.pack("<III", 0, inc, 0))
            half = len(header) // 2
            conn.send_data(0, inc & 0xFF, 0x04, header[:half])
            conn.send_data(1, inc & 0xFF, 0x0C, header[half:])
        elif mid == 0x00030033:  # StreamSwitch
            conn.send_msg(0x00040021, struct.pack("<I", 0))
        elif mid == 0x00030007:  # StartPlaying
            inc = struct.unpack("<I", msg[36:40])[0]
            conn.send_msg(0x00040005, struct.pack("<IIII", 0, inc, open_file_id, 0) + b"\0" * 12)
            conn.send_data(0, inc & 0xFF, 0, packets[0])
            conn.send_msg(0x0004001B, struct.pack("<II", 0, 0))  # Ping
            for n, p in enumerate(packets[1:2], 1):
                conn.send_data(n, inc & 0xFF, n & 0xFF, p)
            # The rest only if the client is still there after a pause: a
            # client that stops reading and closes with unread bytes resets
            # the connection, and the reset loses its last message.
            rest = [(n, p) for n, p in enumerate(packets) if n >= 2]
            pending = (inc, rest)
        elif mid == 0x0003000D:  # CloseFile
            return
        # Pong and anything else: no answer.


def main():
    port, asf = int(sys.argv[1]), sys.argv[2]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1)
    ls.settimeout(60)
    print("mms server ready", flush=True)
    s, _ = ls.accept()
    try:
        serve(Conn(s), asf)
    finally:
        s.close()
        ls.close()


if __name__ == "__main__":
    main()
