"""The few libpod calls the sandbox needs, over the rootless user's API socket.

podman-py carries the ordinary calls; create is posted as raw JSON so that the response's
status and warnings (dropped limits) are not thrown away, and attach, which podman-py does
not implement, is spoken here over the socket directly.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlparse

import requests
from podman import PodmanClient
from podman.errors import APIError, NotFound

API_PREFIX = "/v4.0.0/libpod"
STOPPED = ("stopped", "exited")  # its processes gone; "exited" once Podman also cleaned it up
WAIT_FIRST, WAIT_MAX = 0.005, 0.1  # seconds between looks at a container's state while waiting for its end
STDOUT, STDERR = 1, 2


class PodmanError(Exception):
    """A libpod call failed; the message is safe to show (no job data in it)."""


@dataclass(frozen=True)
class PingFailure:
    detail: str
    slow: bool  # it may pass (a timeout, an error answer on a loaded host); False: no socket, connection refused


@dataclass(frozen=True)
class Created:
    id: str
    warnings: list[str]


class AttachStream:
    """A container's multiplexed stdin/stdout/stderr after the HTTP upgrade.

    Frames are cut from one growing buffer by offset, so each byte is copied a bounded number
    of times however small the frames are (a flood of one-byte writes costs linear time).
    """

    RECV_BYTES = 1 << 16

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(buffered)
        self.eof = False  # the container closed its end: it is gone

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames(self, deadline: float) -> Iterator[tuple[int, bytes] | None]:
        """Yield (stream, payload) frames until EOF; yield None when the deadline has passed."""
        while True:
            while (frame := self._pop_frame()) is not None:
                yield frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield None
                continue
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                continue
            chunk = self.sock.recv(self.RECV_BYTES)
            if not chunk:
                self.eof = True
                return
            self.buffer += chunk

    def drain(self) -> list[tuple[int, bytes]]:
        """The whole frames that have arrived so far, without waiting (for a runner not yet given a job)."""
        while select.select([self.sock], [], [], 0)[0]:
            chunk = self.sock.recv(self.RECV_BYTES)
            if not chunk:
                self.eof = True  # the container is gone
                break
            self.buffer += chunk
        frames: list[tuple[int, bytes]] = []
        while (frame := self._pop_frame()) is not None:
            frames.append(frame)
        return frames

    def _pop_frame(self) -> tuple[int, bytes] | None:
        return pop_frame(self.buffer)

    def close(self) -> None:
        self.sock.close()


class PodmanAPI:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "unix":
            raise ValueError(f"only unix:// Podman sockets are supported, not {url!r}")
        self.socket_path = parsed.path
        self.client = PodmanClient(base_url=url, timeout=timeout)
        self.timeout = timeout

    def ping(self) -> bool:
        return self.ping_error() is None

    def ping_error(self) -> PingFailure | None:
        """None when the service answers its ping, else what failed."""
        try:
            if self.client.ping():
                return None
            return PingFailure("ping answered with an error", slow=True)
        except Exception as exc:  # podman-py wraps the transport's error: name the innermost one
            return describe(exc)

    def version(self) -> str:
        return str(self.client.version().get("Version", ""))

    def create(self, spec: dict[str, Any]) -> Created:
        response = self.client.api.post(
            "/containers/create", data=json.dumps(spec), headers={"content-type": "application/json"}
        )
        body = _json(response)
        if response.status_code != 201 or "Id" not in body:
            raise PodmanError(f"create failed ({response.status_code}): {body.get('message', body)}")
        return Created(id=body["Id"], warnings=list(body.get("Warnings") or []))

    def attach(self, container: str) -> AttachStream:
        """Attach before start so no output is missed; stdin stays open for the job."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        path = f"{API_PREFIX}/containers/{quote(container)}/attach?stdin=true&stdout=true&stderr=true&stream=true"
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                raise PodmanError("attach: connection closed before the upgrade")
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        status = header.split(b"\r\n", 1)[0]
        if b" 101 " not in status and b" 200 " not in status:
            sock.close()
            # e.g. 409 when the runtime cannot create the container (attach prepares it): its reason is in the body.
            reason = _json(_Body(rest)).get("message", "")
            raise PodmanError(f"attach refused: {status.decode(errors='replace')}" + (f": {reason}" if reason else ""))
        sock.settimeout(None)
        return AttachStream(sock, rest)

    def start(self, container: str) -> None:
        response = self.client.api.post(f"/containers/{quote(container)}/start")
        if response.status_code not in (204, 304):
            raise PodmanError(f"start failed ({response.status_code}): {_json(response).get('message', '')}")

    def wait(self, container: str) -> int:
        """The container's exit code, once its processes are gone.

        Read from its state, not from Podman's wait endpoint: a runner's monitor starts no cleanup process
        (runner_monitor), and that endpoint holds a stopped container's answer for 20 s waiting for one."""
        pause = WAIT_FIRST
        while True:
            state = self.inspect(container).get("State") or {}
            if state.get("Status") in STOPPED:
                return int(state.get("ExitCode", -1))
            time.sleep(pause)
            pause = min(pause * 2, WAIT_MAX)

    def logs(self, container: str) -> Iterator[tuple[int, bytes]]:
        """The container's whole output so far from its log file, as (stream, payload) frames
        like attach's: what it wrote while nobody was attached (the Podman service was down)."""
        response = self.client.api.get(f"/containers/{quote(container)}/logs",
                                       params={"stdout": "true", "stderr": "true"}, stream=True)
        if response.status_code != 200:
            raise PodmanError(f"logs failed ({response.status_code}): {_json(response).get('message', '')}")
        buffer = bytearray()
        try:
            for chunk in response.iter_content(AttachStream.RECV_BYTES):
                buffer += chunk
                while (frame := pop_frame(buffer)) is not None:
                    yield frame
        finally:
            response.close()

    def running(self, container: str) -> bool:
        return bool(self.inspect(container).get("State", {}).get("Running"))

    def kill(self, container: str, signal: str = "KILL") -> None:
        # 409: already stopped, which is what we wanted.
        self.client.api.post(f"/containers/{quote(container)}/kill", params={"signal": signal})

    def inspect(self, container: str) -> dict[str, Any]:
        response = self.client.api.get(f"/containers/{quote(container)}/json")
        if response.status_code != 200:
            raise PodmanError(f"inspect failed ({response.status_code})")
        result: dict[str, Any] = response.json()
        return result

    def remove(self, container: str) -> None:
        try:
            self.client.containers.remove(container, force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            raise PodmanError(f"remove failed: {exc.explanation or exc}") from None

    def labelled(self, label: str) -> list[dict[str, Any]]:
        response = self.client.api.get(
            "/containers/json", params={"all": "true", "filters": json.dumps({"label": [label]})}
        )
        if response.status_code != 200:
            raise PodmanError(f"list failed ({response.status_code})")
        result: list[dict[str, Any]] = response.json()
        return result

    def image_exists(self, image: str) -> bool:
        return bool(self.client.images.exists(image))

    def close(self) -> None:
        self.client.close()


def pop_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """The next whole (stream, payload) frame of a multiplexed stream, or None until more arrives."""
    if len(buffer) < 8:
        return None
    kind, size = struct.unpack_from(">BxxxI", buffer)
    if len(buffer) < 8 + size:
        return None
    payload = bytes(buffer[8:8 + size])
    del buffer[:8 + size]  # O(1): CPython moves a bytearray's start instead of copying
    return kind, payload


def unreachable(exc: BaseException) -> bool:
    """Did a call fail because the Podman service is not there (no socket, refused, cut off)?
    Not an answer of it (an error status): those are ordinary failures."""
    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 8:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    return any(isinstance(c, (ConnectionError, FileNotFoundError, requests.ConnectionError)) for c in causes)


def describe(exc: BaseException) -> PingFailure:
    """A failed call in one line, by its innermost cause; `slow` unless it could not even connect."""
    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 8:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    root = causes[-1]
    text = str(root).splitlines()[0][:160] if str(root) else ""
    refused = isinstance(root, (FileNotFoundError, ConnectionRefusedError, PermissionError))
    return PingFailure(f"{type(root).__name__}: {text}".rstrip(": "), slow=not refused)


@dataclass(frozen=True)
class _Body:
    """The part of a refused attach's response that arrived with its head, read like a response."""

    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:200]}
    return body if isinstance(body, dict) else {"message": str(body)[:200]}
