"""Names SeaTable sends that reach a URL, a log line or the database: script names and user names.

A script name becomes one path segment of the dtable-web URL the scheduler calls with SeaTable's secret
(`/run-script/<name>/task/file/`): "." or ".." (or a "/" that a server decodes) would make that call another
one. Control characters and line separators would let a name forge log lines, and a lone surrogate (possible
through JSON's \\uD800 escape) cannot be stored as UTF-8 at all. Such names are refused with a 400.
"""

from __future__ import annotations

import unicodedata

# Cc: C0/C1 controls (newline, escape, NEL); Cs: lone surrogates; Zl/Zp: line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# Bidirectional overrides and isolates: they make a name read as another one in logs and listings.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_DOT_SEGMENTS = frozenset({".", ".."})
_SEPARATORS = frozenset("/\\")


def is_printable_text(value: str) -> bool:
    """No control character, line separator, bidi control or lone surrogate: safe in one log line."""
    return not any(unicodedata.category(ch) in _REFUSED_CATEGORIES or ch in _BIDI_CONTROLS for ch in value)


def is_script_name(value: str) -> bool:
    """A name that is one segment of a SeaTable URL and one line of a log."""
    return (value.strip() not in _DOT_SEGMENTS and not any(ch in _SEPARATORS for ch in value)
            and is_printable_text(value))
