"""Files root writes into directories the sandbox user owns, without following anything that user planted.

host-setup, install-systemd and the tests run as root and write into the sandbox user's home (its Podman
configuration, the API service's log, its systemd unit) and runtime directory. That user (or a runner that
escaped into it) can plant a symlink, a FIFO or a hard link at any of those names. Everything here therefore
works on directory descriptors: a directory is opened component by component with O_NOFOLLOW from a directory
root owns, a file is written under a fresh name (O_EXCL) and renamed over the old entry (a rename replaces a
link, it never follows it), and an existing file is only read or appended to after fstat shows a regular file of
that user with one link, through an O_PATH descriptor (so even opening a FIFO or a device cannot block or act).
Written as root through descriptors rather than as the user in a child process: the same code serves the
staging (--root) installs, needs no fork of a possibly threaded process, and the checks are explicit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from sandbox.errors import SetupError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    """Close a descriptor when the block ends."""
    try:
        yield fd
    finally:
        os.close(fd)


def open_trusted_dir(path: Path) -> int:
    """Open `path` from / without following a symlink; every component must be root's and not writable by others.

    The anchor below which the user's own directories are opened (its home's parent, /run/user)."""
    if not path.is_absolute():
        raise SetupError(f"{path} is not an absolute path")
    fd = os.open("/", _DIR_FLAGS)
    shown = Path("/")
    try:
        for part in path.parts[1:]:
            shown = shown / part
            fd = _step(fd, part, shown)
            info = os.fstat(fd)
            if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise SetupError(f"{shown} is not root's alone (owner uid {info.st_uid}, mode "
                                 f"{stat.S_IMODE(info.st_mode):o}): refusing to write below it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _step(parent: int, name: str, shown: Path) -> int:
    """Open the directory `name` below `parent` (closing `parent`), never through a symlink."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SetupError(f"{shown} is not a directory (a symlink?): refusing to follow it; remove it") from None
        raise SetupError(f"cannot open {shown}: {exc.strerror}") from None
    finally:
        os.close(parent)


def owned_dir(parent: int, name: str, uid: int, gid: int, shown: Path, mode: int = 0o700) -> int:
    """The user's directory `name` below `parent`: made (then given to the user) when missing, else checked.

    An existing entry must be a real directory owned by `uid`; it is never replaced, chowned or followed."""
    created = False
    try:
        os.mkdir(name, mode, dir_fd=parent)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise SetupError(f"cannot make {shown}: {exc.strerror}") from None
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SetupError(f"{shown} is not a directory (a symlink?): refusing to follow it; remove it") from None
        raise SetupError(f"cannot open {shown}: {exc.strerror}") from None
    info = os.fstat(fd)
    if created and info.st_uid == os.geteuid() != uid:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    elif info.st_uid != uid:
        os.close(fd)
        raise SetupError(f"{shown} belongs to uid {info.st_uid}, not to uid {uid}: refusing to write in it")
    return fd


def owned_path(anchor: Path, relative: Path, uid: int, gid: int, mode: int = 0o700) -> int:
    """Open anchor/relative: `anchor` trusted (root's), every directory below it the user's (made if missing)."""
    fd = open_trusted_dir(anchor)
    shown = anchor
    try:
        for part in relative.parts:
            shown = shown / part
            child = owned_dir(fd, part, uid, gid, shown, mode)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def user_dir(home: Path, relative: Path, uid: int, gid: int) -> int:
    """A directory below the user's home (home included), made 0700 where missing."""
    return owned_path(home.parent, Path(home.name) / relative, uid, gid)


def read_regular(directory: int, name: str, uid: int) -> str | None:
    """The text of `name` if it is a regular file of `uid` with one link; None for anything else or nothing."""
    try:
        handle = os.open(name, _PATH_FLAGS, dir_fd=directory)
    except FileNotFoundError:
        return None
    with opened(handle):
        info = os.fstat(handle)
        if not _plain_file_of(info, uid):
            return None
        with opened(os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)) as fd, \
                os.fdopen(os.dup(fd), "rb") as data:
            return data.read().decode(errors="replace")


def _plain_file_of(info: os.stat_result, uid: int) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_uid == uid and info.st_nlink == 1


def replace_file(directory: int, name: str, text: str, mode: int, owner: tuple[int, int] | None) -> None:
    """Write `name` atomically: a fresh file (O_EXCL) renamed over whatever the entry was, never through it."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory)
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            handle.write(text.encode())
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.unlink(tmp, dir_fd=directory)
        raise
    finally:
        os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError as exc:
        os.unlink(tmp, dir_fd=directory)
        raise SetupError(f"cannot replace {name}: {exc.strerror}") from None


def install_script(path: Path, text: str) -> Path:
    """A root-owned executable (0755) at `path` (host-setup's wrappers), replaced only when its text differs."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with opened(os.open(path.parent, _DIR_FLAGS)) as directory:
        if read_regular(directory, path.name, 0) != text:
            replace_file(directory, path.name, text, 0o755, None)
    return path


def open_log(directory: int, name: str, uid: int, gid: int) -> int:
    """A descriptor appending to the user's log `name` (0600); anything but its own plain file is replaced first."""
    with contextlib.suppress(FileNotFoundError), opened(os.open(name, _PATH_FLAGS, dir_fd=directory)) as handle:
        if not _plain_file_of(os.fstat(handle), uid):
            os.unlink(name, dir_fd=directory)  # the entry only: a link's target or a FIFO's reader stays untouched
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=directory)
    except OSError as exc:  # planted again meanwhile (ELOOP, ENXIO for a FIFO)
        raise SetupError(f"cannot open the log {name}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid not in (uid, os.geteuid()):
        os.close(fd)
        raise SetupError(f"{name} changed while it was opened: refusing to write it")
    if info.st_uid != uid:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, 0o600)
    os.set_blocking(fd, True)
    return fd


def make_private(directory: int, name: str, uid: int) -> None:
    """chmod 0600 the user's plain file `name` (a log written before this rule); anything else is left alone."""
    with contextlib.suppress(FileNotFoundError), opened(os.open(name, _PATH_FLAGS, dir_fd=directory)) as handle:
        if _plain_file_of(os.fstat(handle), uid):
            os.chmod(f"/proc/self/fd/{handle}", 0o600)  # the file itself: an O_PATH descriptor has no fchmod
