"""Runs inside the sandbox user's rootless user namespace: applies nftables rules in runners' network namespaces.

Started by sandbox.netguard as `/usr/bin/python3 -I netguard_helper.py` (the system interpreter, for Debian's
python3-nftables binding of libnftables), one per sandbox service. It joins the user namespace of a process
of the sandbox user's rootless Podman (conmon) once, which gives it CAP_NET_ADMIN over every runner's network
namespace (all owned by that user namespace or its children) and over nothing else on the host. Runners
themselves hold no capability there, so the rules it installs are outside their reach.

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout:
  {"op": "open", "key": K, "pid": P, "userns_pid": C, "nft": TEXT}   hold P's netns as K, apply TEXT there;
      with "expect_ino": N only if that netns is N (a runner adopted again after a restart of this helper)
  {"op": "apply", "key": K, "nft": TEXT}                               apply TEXT in K's netns
  {"op": "refused", "key": K}                                          the refused set and counter of K
  {"op": "close", "key": K}                                            let K's netns go
Answers are {"ok": true, ...} or {"ok": false, "error": "..."}. It exits when stdin closes.
Standard library plus Debian's nftables module only: it imports nothing from the sandbox package.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
TABLE = "inet runner"

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, kind: int) -> None:
    """os.setns arrived in Python 3.12; Debian 12's interpreter is 3.11."""
    if _libc.setns(fd, kind) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Helper:
    def __init__(self) -> None:
        import nftables  # Debian's python3-nftables; a clear error below when it is missing

        self._nftables = nftables
        self.userns: int | None = None  # inode of the user namespace joined
        self.own_netns = os.stat("/proc/self/ns/net").st_ino
        self.netns: dict[str, int] = {}  # key -> fd that keeps the runner's netns alive

    def join(self, pid: int) -> None:
        """Join the rootless user namespace once; later requests must come from the same one."""
        inode = os.stat(f"/proc/{pid}/ns/user").st_ino
        if self.userns is None:
            fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if inode != os.stat("/proc/self/ns/user").st_ino:
                    setns(fd, CLONE_NEWUSER)
            finally:
                os.close(fd)
            self.userns = inode
        elif inode != self.userns:
            raise ValueError("that process is in another user namespace")

    def nft(self, key: str, text: str, json_output: bool = False) -> str:
        setns(self.netns[key], CLONE_NEWNET)
        ctx = self._nftables.Nftables()  # its netlink socket belongs to the netns it is made in
        ctx.set_json_output(json_output)
        ctx.set_handle_output(False)
        rc, out, err = ctx.cmd(text)
        if rc != 0:
            raise ValueError(f"nft: {err.strip() or rc}")
        return str(out)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op, key = request.get("op"), str(request.get("key", ""))
        if op == "open":
            if key in self.netns:
                raise ValueError(f"{key} is already open")
            self.join(int(request["userns_pid"]))
            fd = os.open(f"/proc/{int(request['pid'])}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            inode = os.fstat(fd).st_ino
            expected = request.get("expect_ino")
            if inode == self.own_netns or (expected is not None and inode != int(expected)):
                os.close(fd)
                raise ValueError("that process is not in the runner's network namespace")
            self.netns[key] = fd
            try:
                if request.get("nft"):
                    self.nft(key, str(request["nft"]))
            except BaseException:
                os.close(self.netns.pop(key))
                raise
            return {"ok": True, "ino": inode}
        if key not in self.netns:
            raise ValueError(f"{key} is not open")
        if op == "apply":
            self.nft(key, str(request["nft"]))
            return {"ok": True}
        if op == "refused":
            return {"ok": True, **self.refused(key)}
        if op == "close":
            os.close(self.netns.pop(key))
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")

    def refused(self, key: str) -> dict[str, Any]:
        """Every refused destination with its attempt count, and the total through the refuse chain."""
        destinations: list[list[Any]] = []
        for name in ("refused4", "refused6"):
            listing = json.loads(self.nft(key, f"list set {TABLE} {name}", json_output=True))
            for item in listing.get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    wrapped = elem.get("elem", {}) if isinstance(elem, dict) else {}
                    address, proto, port = wrapped.get("val", {}).get("concat", [None, None, None])
                    packets = wrapped.get("counter", {}).get("packets", 1)
                    destinations.append([address, proto, port, packets])
        counter = json.loads(self.nft(key, f"list counter {TABLE} refused", json_output=True))
        total = sum(item.get("counter", {}).get("packets", 0) for item in counter.get("nftables", []))
        return {"refused": destinations, "total": total}


def main() -> None:
    try:
        helper = Helper()
    except ImportError as exc:
        print(json.dumps({"ok": False, "error": f"python3-nftables is missing ({exc})"}), flush=True)
        return
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        try:
            answer = helper.handle(json.loads(line))
        except Exception as exc:  # one bad request never ends the helper
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
