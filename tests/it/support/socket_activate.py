#!/usr/bin/env python3
"""Socket activation as systemd's .socket + .service units do it, for tests.

    socket_activate.py SOCKET PIDFILE COMMAND...

Holds a listening unix socket at SOCKET and runs COMMAND with it as fd 3 (LISTEN_FDS=1),
starting COMMAND again whenever it exits (Restart=always); the running child's pid is in
PIDFILE. While the child is down, clients' connections wait in the socket's backlog."""
import os
import socket
import subprocess
import sys

path, pidfile, *cmd = sys.argv[1:]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(128)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
while True:
    child = subprocess.Popen(cmd, pass_fds=[3], env=dict(os.environ, LISTEN_FDS="1"))
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.replace(pidfile + ".tmp", pidfile)
    child.wait()
