"""Runner side of egress: 127.0.0.1:3128 relayed to the sandbox's Unix socket at /run/egress.

A runner has no network interface but loopback; HTTP clients (requests, seatable_api) only
know how to reach a proxy over TCP, so this forwarder carries their bytes to the host-side
proxy unchanged. It enforces nothing: all policy is on the host, so a script that kills or
bypasses it gains nothing. Standard library only; imported by the entrypoint before user code.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import threading
import time

SOCKET_PATH = "/run/egress/proxy.sock"
PORT = 3128
BUFFER = 1024 * 1024


def proxy_env(port: int = PORT) -> dict[str, str]:
    """The variables that make requests (and so seatable_api) use the forwarder for everything."""
    url = f"http://127.0.0.1:{port}"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": "", "no_proxy": ""}


def start(unix_path: str = SOCKET_PATH, port: int = PORT) -> None:
    """Listen on 127.0.0.1:port now (so the first request cannot race us), serve in a daemon thread."""
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    threading.Thread(target=_accept, args=(listener, unix_path), daemon=True, name="egress-forward").start()


def _accept(listener: socket.socket, unix_path: str) -> None:
    while listener.fileno() >= 0:
        try:
            client, _ = listener.accept()
        except OSError:
            time.sleep(0.05)  # out of descriptors: back off rather than spin
            continue
        threading.Thread(target=_relay, args=(client, unix_path), daemon=True, name="egress-relay").start()


def _relay(client: socket.socket, unix_path: str) -> None:
    with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
        try:
            upstream.connect(unix_path)
            _pump(client, upstream)
        except OSError:
            pass  # the proxy is gone or a peer reset: the client sees the connection end


def _pump(client: socket.socket, upstream: socket.socket) -> None:
    """Both directions until the proxy side ends; a client's EOF is passed on as a half-close.

    splice(2) through a pipe keeps the bytes out of this process (a 50 MB download must not be
    copied twice more than a direct one); plain recv/send where the kernel refuses splice.
    """
    poller = select.poll()
    poller.register(client, select.POLLIN)
    poller.register(upstream, select.POLLIN)
    peer = {client.fileno(): (client, upstream), upstream.fileno(): (upstream, client)}
    pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, BUFFER)
    except OSError:
        pass
    buf = bytearray(0)
    try:
        while True:
            for fd, _ in poller.poll():
                src, dst = peer[fd]
                if buf:
                    n = src.recv_into(buf)
                    dst.sendall(memoryview(buf)[:n])
                else:
                    try:
                        n = os.splice(fd, pipe_w, BUFFER)
                    except OSError as exc:
                        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                            raise
                        buf = bytearray(BUFFER)  # nothing moved yet: switch to recv/send
                        continue
                    left = n
                    while left:
                        left -= os.splice(pipe_r, dst.fileno(), left)
                if not n:
                    if src is upstream:
                        return
                    poller.unregister(fd)
                    dst.shutdown(socket.SHUT_WR)
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
