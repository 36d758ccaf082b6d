"""The lab's servers, run inside the lab's network namespace (tests.support.netlab starts this module).

DNS (dnslib) on the public address, port 53: internet.lab.test -> public, internal.lab.test -> private,
metadata.lab.test -> 169.254.169.254, anything else NXDOMAIN. HTTPS on public:8443. A plain HTTP server on
8080 and a UDP echo on 5353 of both addresses. SMTP (aiosmtpd) on 2525 of both. Every contact is printed as one
JSON line on stdout, so a test can tell "refused" from "reached" by what the servers saw.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer

_print_lock = threading.Lock()


def emit(**event: Any) -> None:
    with _print_lock:
        print(json.dumps(event), flush=True)


class LabResolver(BaseResolver):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        emit(event="dns", name=name, qtype=QTYPE[request.q.qtype])
        address = self.names.get(name)
        if address is None:
            reply.header.rcode = 3  # NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=5))
        return reply


class _Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        """Without HTTPServer's reverse lookup of its own address (the lab has no resolver)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        assert isinstance(host, str)  # AF_INET: typeshed allows bytes for other families
        self.server_name, self.server_port = host, port


def http_server(address: str, port: int, context: ssl.SSLContext | None) -> None:
    label = "https" if context else "http"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            emit(event=label, address=address, port=port, path=self.path, peer=self.client_address[0])
            body = f"hello from {address}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = _Server((address, port), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def udp_echo(address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))

    def serve() -> None:
        while True:
            data, peer = sock.recvfrom(2048)
            emit(event="udp", address=address, port=port, data=data.decode(errors="replace"), peer=peer[0])
            sock.sendto(b"echo:" + data, peer)

    threading.Thread(target=serve, daemon=True).start()


class MailSink:
    def __init__(self, address: str) -> None:
        self.address = address

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        emit(event="smtp", address=self.address, sender=envelope.mail_from, rcpt=list(envelope.rcpt_tos),
             data=envelope.content.decode(errors="replace"))
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--public", required=True)
    parser.add_argument("--private", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    names = {"internet.lab.test": args.public, "internal.lab.test": args.private,
             "metadata.lab.test": "169.254.169.254"}
    resolver = LabResolver(names)
    for tcp in (False, True):
        DNSServer(resolver, address=args.public, port=53, tcp=tcp).start_thread()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    http_server(args.public, 8443, context)
    mail = []
    for address in (args.public, args.private):
        http_server(address, 8080, None)
        udp_echo(address, 5353)
        controller = Controller(MailSink(address), hostname=address, port=2525)
        controller.start()
        mail.append(controller)
    emit(event="ready")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
