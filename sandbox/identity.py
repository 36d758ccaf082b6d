"""Runner identities: one fixed id mapping for every runner, and a host uid of its own per live run.

The kernel keeps per-user counters by kernel uid: RLIMIT_NPROC, pending signals, message
queues, and who may signal or read whom. With Podman's default rootless mapping every runner
ran as the same host uid, so one run could use up every other run's process budget. Here:

- every runner gets one fixed user namespace mapping, container ids 0..N-1 onto the sandbox
  user's N subordinate ids. It leaves the sandbox user's own uid out (container root is nobody
  on the host) and, being one mapping, costs one id-shifted copy of the image in
  containers/storage (rootless overlay cannot shift ids at mount time); build-runner makes it.
- every live runner runs as a container uid of its own (RUN_UID_FIRST and up), so its host uid
  is its own. A uid is claimed with an exclusive file, so sandboxes sharing one Podman user never
  hand out the same one, and released only after the runner's container is removed.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Below this: the image's system accounts and its `seatable` user (1000).
RUN_UID_FIRST = 10000
CLAIM_DIR_NAME = "seatable-sandbox/runner-uids"
CLAIM_GRACE = 300  # seconds: a claim is taken well before its container exists, never this long


class NoIdentity(Exception):
    """Every runner uid is held by a live runner."""


@dataclass(frozen=True)
class IdMapping:
    """The sandbox user's subordinate ids, as its rootless Podman sees them."""

    size: int  # how many subordinate uids (and gids) the user has
    host_first: int  # the host uid of the first one (container uid 0 of a runner)
    owner_uid: int  # the sandbox user (who runs Podman)

    @classmethod
    def from_podman_info(cls, info: dict[str, Any]) -> IdMapping:
        """From `podman info`: host.idMappings; container_id 0 is the user, 1.. its subordinate ids."""
        mappings = (info.get("host") or {}).get("idMappings") or {}
        sizes = []
        first = owner = 0
        for kind in ("uidmap", "gidmap"):
            entries = mappings.get(kind) or []
            subordinate = [m for m in entries if int(m.get("container_id", 0)) >= 1]
            sizes.append(sum(int(m.get("size", 0)) for m in subordinate))
            if kind == "uidmap":
                if subordinate:
                    first = int(min(subordinate, key=lambda m: int(m["container_id"]))["host_id"])
                owner = next((int(m["host_id"]) for m in entries if int(m.get("container_id", -1)) == 0), 0)
        return cls(size=min(sizes), host_first=first, owner_uid=owner)

    def spec(self) -> dict[str, Any]:
        """libpod's `idmappings`: container 0.. onto the rootless namespace's 1.. (its subordinate ids)."""
        entry = [{"container_id": 0, "host_id": 1, "size": self.size}]
        return {"UIDMap": entry, "GIDMap": entry}

    @property
    def run_uids(self) -> range:
        return range(RUN_UID_FIRST, self.size)

    def host_uid(self, container_uid: int) -> int:
        return self.host_first + container_uid


def claim_dir(owner_uid: int, fallback: Path) -> Path:
    """Shared by every process that starts runners through this user's Podman: its runtime directory.

    A sandbox in a container does not see that directory; it is the only one there and uses `fallback`."""
    runtime = Path(f"/run/user/{owner_uid}")
    return runtime / CLAIM_DIR_NAME if runtime.is_dir() else fallback / "runner-uids"


class RunnerIdentities:
    """Hands out the container uid of each new runner; a uid is never handed out twice while held."""

    def __init__(self, mapping: IdMapping, claims: Path, owner: str) -> None:
        if len(mapping.run_uids) <= 0:
            raise ValueError(f"the sandbox user has {mapping.size} subordinate ids; runners need more than "
                             f"{RUN_UID_FIRST} (run 'seatable-sandbox host-setup')")
        self.mapping = mapping
        self.claim_dir = claims
        self.owner = owner
        self._held: set[int] = set()
        self._lock = threading.Lock()
        uids = mapping.run_uids
        # Start anywhere and go round: a released uid is the last to be handed out again.
        self._cursor = random.randrange(len(uids))
        _make_owned_dir(claims, mapping.owner_uid)

    @property
    def capacity(self) -> int:
        return len(self.mapping.run_uids)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def claim(self) -> int:
        uids = self.mapping.run_uids
        with self._lock:
            for _ in range(len(uids)):
                uid = uids[self._cursor]
                self._cursor = (self._cursor + 1) % len(uids)
                if self._take(uid):
                    self._held.add(uid)
                    return uid
        raise NoIdentity(f"all {len(uids)} runner uids are in use")

    def release(self, uid: int) -> None:
        """After the runner's container is gone (its processes with it)."""
        with self._lock:
            if uid not in self._held:
                return
            self._held.discard(uid)
            (self.claim_dir / str(uid)).unlink(missing_ok=True)

    def reclaim(self, live: set[int]) -> int:
        """Drop claims left by a crash: this owner's that this process does not hold, and anyone's that no
        container (`live`: the uids of the user's runner containers) has used for CLAIM_GRACE seconds (an
        owner that never came back). Call after this node's orphan containers are removed."""
        dropped = 0
        now = time.time()
        with self._lock:
            for path in self.claim_dir.iterdir():
                if not path.name.isdigit() or int(path.name) in self._held:
                    continue
                try:
                    mine = path.read_text() == self.owner
                    abandoned = int(path.name) not in live and now - path.stat().st_mtime > CLAIM_GRACE
                    if mine or abandoned:
                        path.unlink()
                        dropped += 1
                except OSError:
                    continue
        return dropped

    def _take(self, uid: int) -> bool:
        try:
            fd = os.open(self.claim_dir / str(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        with os.fdopen(fd, "w") as handle:
            handle.write(self.owner)
        return True


def _make_owned_dir(path: Path, owner_uid: int) -> None:
    """mkdir -p; directories root makes here go to the sandbox user, whose processes claim too."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() == 0 and owner_uid:
        for directory in missing:
            os.chown(directory, owner_uid, -1, follow_symlinks=False)  # just made; never a planted link's target
