"""Wake the dispatchers on this host when there is work, instead of leaving a run to their next poll.

The API and the dispatchers are separate processes, possibly on separate hosts, and the queue lives in the
database, so a wake-up can only ever be a hint: every dispatcher still polls (IDLE_POLL), and a lost datagram
costs a run that poll, nothing else. On one host the hint is a Unix datagram sent to every dispatcher's socket
in a directory private to the scheduler's user (0700, checked, never followed through a symlink), one
directory per database so the pipelines of several databases on one host do not wake each other. A new run
and a finished run (a slot freed on a node) both wake the dispatchers.

Why by hand: the standard library's datagram sockets are all it needs; a broker (Redis, MariaDB's events)
would add a moving part to a hint that may be lost anyway.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import select
import socket
import stat
import tempfile
from pathlib import Path

from scheduler.config import Config

log = logging.getLogger(__name__)

SUFFIX = ".sock"


def wake_dir(config: Config) -> Path | None:
    """The directory of this database's dispatcher sockets, or None when wake-ups are off."""
    setting = config.dispatch_wake_dir
    if setting.lower() in ("off", "none", "false", "0"):
        return None
    if setting and setting != "auto":
        return Path(setting)
    if config.uses_mysql:
        identity = f"mysql://{config.db_host}:{config.db_port}/{config.database_name}"
    else:
        identity = f"sqlite://{os.path.abspath(config.sqlite_path)}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"seatable-scheduler-{os.getuid()}" / f"wake-{digest}"


def _private_dir(path: Path) -> bool:
    """Create `path` (and its parent) 0700 for this user, or accept it only when it already is exactly that."""
    for directory in (path.parent, path):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            log.warning("dispatcher wake-ups off: cannot create %s (%s); dispatchers poll", directory, exc)
            return False
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            log.warning("dispatcher wake-ups off: %s is not a private directory of this user; dispatchers poll",
                        directory)
            return False
    return True


class WakeSignal:
    """The sending side (the API's workers): one datagram to every dispatcher socket in the directory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory if directory is not None and _private_dir(directory) else None
        self._socket: socket.socket | None = None
        if self.directory is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    def notify(self) -> None:
        """Never raises and never blocks: a full or stale socket means that dispatcher is awake or gone."""
        if self._socket is None or self.directory is None:
            return
        try:
            entries = [e for e in os.scandir(self.directory) if e.name.endswith(SUFFIX)]
        except OSError:
            return
        for entry in entries:
            try:
                self._socket.sendto(b"w", entry.path)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):  # its dispatcher died without cleaning up
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class WakeListener:
    """The receiving side (one per dispatcher process): `wait()` returns early on a datagram or `interrupt()`."""

    def __init__(self, directory: Path | None) -> None:
        self.path: Path | None = None
        self._socket: socket.socket | None = None
        self._interrupt_r, self._interrupt_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if directory is None or not _private_dir(directory):
            return
        path = directory / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            log.warning("dispatcher wake-ups off: cannot bind %s (%s); polling", path, exc)
            return
        sock.setblocking(False)
        self.path, self._socket = path, sock

    @property
    def active(self) -> bool:
        return self._socket is not None

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s; True when woken by a datagram (all queued ones are consumed)."""
        watched = [self._interrupt_r] + ([self._socket.fileno()] if self._socket is not None else [])
        ready, _, _ = select.select(watched, [], [], max(0.0, timeout))
        woken = False
        if self._socket is not None and self._socket.fileno() in ready:
            woken = True
            while True:
                try:
                    self._socket.recv(16)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
        return woken

    def interrupt(self) -> None:
        """End a `wait()` now (SIGTERM: stop), from any thread or a signal handler."""
        try:
            os.write(self._interrupt_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None
        for fd in (self._interrupt_r, self._interrupt_w):
            try:
                os.close(fd)
            except OSError:
                pass
