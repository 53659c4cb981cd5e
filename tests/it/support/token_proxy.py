#!/usr/bin/env python3
"""A bearer-token front for a registry, for tests: the distribution spec's token flow.

Requests to /v2/... without a valid `Authorization: Bearer` get 401 with a Bearer challenge
naming /token on this server. /token checks Basic credentials and hands out a token valid for
USES requests, so clients must refresh. Everything else is forwarded to the upstream registry.
A POST to /token with OAuth2's refresh-token grant (refresh_token = PASSWORD) is the
identity-token path. Each token issued is logged as a line `TOKEN via=basic|refresh scope=...`.
"""
import base64
import http.client
import http.server
import secrets
import sys
import threading
import urllib.parse

port, upstream, user, password, uses = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
tokens = {}
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def token(self):
        via = "basic"
        if self.command == "POST":
            # OAuth2 refresh-token grant: PASSWORD is the identity token.
            length = int(self.headers.get("Content-Length", 0) or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [password]:
                return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            if self.headers.get("Authorization"):
                return self.reply(400, b'{"errors":[{"code":"DENIED","message":"no Basic with a grant"}]}')
            scope, via, key = form.get("scope", [""])[0], "refresh", "access_token"
        else:
            want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if self.headers.get("Authorization") != want:
                return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            scope, key = self.path.split("scope=")[-1], "token"
        t = secrets.token_hex(16)
        with lock:
            tokens[t] = uses
            # Under the lock: lines of two handler threads must not interleave.
            sys.stdout.write(f"TOKEN via={via} scope={scope}\n")
            sys.stdout.flush()
        self.reply(200, ('{"%s":"%s","expires_in":300}' % (key, t)).encode(), [("Content-Type", "application/json")])

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        t = auth[len("Bearer "):]
        with lock:
            left = tokens.get(t, 0)
            if left <= 0:
                return False
            tokens[t] = left - 1
        return True

    def forward(self):
        if self.path.startswith("/token"):
            return self.token()
        if not self.authorized():
            realm = f"http://127.0.0.1:{port}/token"
            challenge = f'Bearer realm="{realm}",service="lamina-test"'
            return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}',
                              [("WWW-Authenticate", challenge), ("Content-Type", "application/json")])
        length = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "connection")}
        conn = http.client.HTTPConnection(upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        skip = ("transfer-encoding", "connection", "content-length")
        self.reply(resp.status, data, [(k, v) for k, v in resp.getheaders() if k.lower() not in skip])
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # Readiness probes hang up early; a reset connection is not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


Server(("127.0.0.1", int(port)), Handler).serve_forever()
