"""A run's output: capped in characters while it streams in, bounded in bytes when it is reported."""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping

from sandbox import texts

_CHUNK = 4096  # characters measured at a time when a result body must be cut


class OutputCap:
    """Keeps at most `limit` characters of a byte stream, decoding UTF-8 incrementally.

    Past the cap the stream is only counted (drain and count): the runner goes on to its end as
    upstream's does, and a flood costs neither memory nor decoding here.
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

    def notice(self) -> str:
        """What to append to the kept output: the cut, said where it happened ("" when nothing was cut)."""
        return texts.notice(texts.OUTPUT_LIMIT.format(limit=self.limit)) if self.reached else ""


def encode_body(body: Mapping[str, object]) -> bytes:
    """A callback body as sent: compact JSON, UTF-8, non-ASCII as itself (an emoji is 4 bytes, not 12)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", errors="replace")


def fit_result(body: Mapping[str, object], max_bytes: int) -> bytes:
    """The encoded result body, its output cut (with a notice) so that the whole is at most max_bytes.

    The cut keeps whole characters: what arrives is the output exactly as written, up to the cut.
    """
    raw = encode_body(body)
    if len(raw) <= max_bytes:
        return raw
    output = str(body.get("output") or "")
    # The notice at its longest (the most characters that can be kept) reserves the room for it.
    longest = texts.notice(texts.BODY_LIMIT.format(kept=len(output), limit=max_bytes))
    budget = max_bytes - len(encode_body({**body, "output": longest}))
    kept = _prefix_within(output, budget)
    notice = texts.notice(texts.BODY_LIMIT.format(kept=kept, limit=max_bytes))
    return encode_body({**body, "output": output[:kept] + notice})


def _json_size(text: str) -> int:
    """Bytes of `text` inside a JSON string (escapes included, quotes not)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", errors="replace")) - 2


def _prefix_within(text: str, budget: int) -> int:
    """The most leading characters of `text` whose JSON form takes at most `budget` bytes.

    JSON escaping is per character, so sizes add up chunk by chunk: one pass, then a binary
    search inside the chunk where the budget runs out.
    """
    used = 0
    for start in range(0, len(text), _CHUNK):
        chunk = text[start:start + _CHUNK]
        size = _json_size(chunk)
        if used + size > budget:
            room = budget - used
            low, high = 0, len(chunk)
            while low < high:
                middle = (low + high + 1) // 2
                if _json_size(chunk[:middle]) <= room:
                    low = middle
                else:
                    high = middle - 1
            return start + low
        used += size
    return len(text)
