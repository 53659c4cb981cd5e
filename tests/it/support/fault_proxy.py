#!/usr/bin/env python3
"""A fault-injecting proxy in front of a registry, for tests.

Usage: fault_proxy.py PORT UPSTREAM MODE_FILE
Blob GETs (/v2/.../blobs/...) are treated according to the word in MODE_FILE, read at each
request: pass, drop (close without answering), stall (answer nothing for 60 s), truncate
(announce the full length, send half, close), flip (change one byte of the body), 500, 503,
hold:N (send the first N bytes of the body, then wait until the mode changes and send the rest),
status:CODE[:TEXT] (answer HTTP CODE, to every blob GET or to those where "PATH range=RANGE"
holds TEXT, RANGE being the Range header or -).
Everything else is forwarded untouched. Each faulted request is logged as `FAULT mode path`,
and every blob GET as `GET path range=VALUE` (`-` without a Range header).
"""
import http.client
import http.server
import sys
import threading
import time

port, upstream, mode_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]


LOG_LOCK = threading.Lock()


def log(line):
    """One whole line on stdout (handler threads must not interleave their lines)."""
    with LOG_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def mode():
    try:
        return open(mode_file).read().strip() or "pass"
    except OSError:
        return "pass"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        m = mode() if "/blobs/" in self.path and self.command == "GET" else "pass"
        if "/blobs/" in self.path and self.command == "GET":
            log(f"GET {self.path} range={self.headers.get('Range', '-')}")
        if m.startswith("status:"):
            parts = m.split(":", 2)
            seen = f"{self.path} range={self.headers.get('Range', '-')}"
            if len(parts) == 3 and parts[2] not in seen:
                m = "pass"
        if m != "pass":
            log(f"FAULT {m} {self.path}")
        if m == "drop":
            self.close_connection = True
            return
        if m == "stall":
            time.sleep(60)
            self.close_connection = True
            return
        if m in ("500", "503") or m.startswith("status:"):
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
            self.send_response(int(m.split(":")[1] if m.startswith("status:") else m))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn = http.client.HTTPConnection(upstream, timeout=30)
        conn.request(self.command, self.path, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if m == "flip" and data:
            data = bytearray(data)
            data[len(data) // 2] ^= 0x55
            data = bytes(data)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if m == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if m.startswith("hold:"):
            n = int(m.split(":")[1])
            self.wfile.write(data[:n])
            self.wfile.flush()
            if len(data) > n:
                log(f"HOLD {self.path} at {n} of {len(data)}")
            while len(data) > n and mode() == m:
                time.sleep(0.05)
            self.wfile.write(data[n:])
            return
        self.wfile.write(data)

    do_GET = do_HEAD = forward


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


Server(("127.0.0.1", port), Handler).serve_forever()
