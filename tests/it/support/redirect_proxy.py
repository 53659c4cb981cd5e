#!/usr/bin/env python3
"""A registry front that redirects blob GETs to "object storage", for tests.

Usage: redirect_proxy.py PORT UPSTREAM STORAGE
On 127.0.0.1:PORT it forwards everything to UPSTREAM (a registry), except that it asks for
Basic credentials (any) on /v2/ and answers blob GETs with 307 to
http://localhost:PORT/objects/<hex>?sig=1 — another origin (host differs) served by this same
process from the registry's STORAGE directory, with Range support. Logs one line per request:
`REDIRECT path`, `OBJECT path range=R auth=yes|no`.
"""
import http.client
import http.server
import os
import sys
import threading

port, upstream, storage = int(sys.argv[1]), sys.argv[2], sys.argv[3]
LOCK = threading.Lock()


def log(line):
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def object(self):
        auth = "yes" if self.headers.get("Authorization") else "no"
        rng = self.headers.get("Range") or "-"
        log(f"OBJECT {self.path} range={rng} auth={auth}")
        hexd = self.path.split("/objects/")[1].split("?")[0]
        path = os.path.join(storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
        data = open(path, "rb").read()
        start, end = 0, len(data) - 1
        status = 200
        if rng != "-":
            a, b = rng.split("=")[1].split("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            status = 206
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        if self.path.startswith("/objects/"):
            return self.object()
        if self.path.startswith("/v2/") and not self.headers.get("Authorization"):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="redirect-proxy"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.command == "GET" and "/blobs/sha256:" in self.path:
            hexd = self.path.split("/blobs/sha256:")[1].split("?")[0]
            log(f"REDIRECT {self.path}")
            self.send_response(307)
            self.send_header("Location", f"http://localhost:{port}/objects/{hexd}?sig=1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        conn = http.client.HTTPConnection(upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = handle_any


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
