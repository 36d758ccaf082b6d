"""Output capping and decoding while a runner's output streams in."""

from __future__ import annotations

import codecs


class OutputCap:
    """Keeps at most `limit` characters of a byte stream, decoding UTF-8 incrementally.

    Memory stays bounded by the limit whatever the runner writes: bytes past the cap are
    counted, not kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._kept = 0
        self.reached = False
        self.bytes_seen = 0

    def feed(self, data: bytes) -> bool:
        """Add output; return True once the cap is reached."""
        self.bytes_seen += len(data)
        if self.reached:
            return True
        text = self._decoder.decode(data)
        room = self.limit - self._kept
        if len(text) > room:
            text = text[:room]
            self.reached = True
        self._parts.append(text)
        self._kept += len(text)
        return self.reached

    def text(self) -> str:
        if not self.reached:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._parts.append(tail[: max(0, self.limit - self._kept)])
                self._decoder.reset()
        return "".join(self._parts)
