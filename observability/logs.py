"""Log lines of both services: plain text or JSON lines (one switch, `LOG_FORMAT`), to stderr or stdout.

Every line about a run carries the run's fields (run id, script name, base, node): as JSON keys, or as
`[run_id=... script_name=... base=... node=...]` at the end of a plain line. They come from `RunLog`, a
`LoggerAdapter`, so a call site names the run once. Plain lines escape control characters in the message and
the fields, and indent every continuation line (tracebacks), so a script named "x\\n2030-01-01 ERROR ..." can
never start a line that looks like a record of its own; JSON lines escape by construction.

What is never logged: tokens, a script's code, its input or its output. Call sites pass ids and names only.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from gunicorn.glogging import Logger as GunicornBaseLogger
from pythonjsonlogger.json import JsonFormatter

RUN_FIELDS = ("run_id", "script_name", "base", "node")
FORMATS = ("plain", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """Control characters (newline, carriage return, escape sequences...) as visible escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message [run_id=.. script_name=.. base=.. node=..]`, one physical line per record
    (continuation lines of a traceback are indented)."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        message = escape(record.getMessage())
        fields = " ".join(
            f"{name}={escape(str(getattr(record, name)))}"
            for name in RUN_FIELDS
            if getattr(record, name, None) not in (None, "")
        )
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if fields:
            line += f" [{fields}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + "\n".join("    " + part for part in record.exc_text.splitlines())
        return line


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, the run's fields, exc_info when there is one."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return json_formatter()
    return PlainFormatter()


class _State:
    """The handler `configure` installed, for gunicorn's loggers (set up later, in the same process)."""

    handler: logging.Handler | None = None


def configure(level: str, log_format: str, to_stdout: bool = False) -> logging.Handler:
    """Install one handler on the root logger: every logger of the process writes through it."""
    stream: TextIO = sys.stdout if to_stdout else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _State.handler = handler
    return handler


class GunicornLogger(GunicornBaseLogger):
    """gunicorn's error and access logs through the handler `configure` installed (same format, same stream)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if _State.handler is None:
            return
        for logger in (self.error_log, self.access_log):
            for old in list(logger.handlers):
                logger.removeHandler(old)
            logger.addHandler(_State.handler)
            logger.propagate = False


class RunLog(logging.LoggerAdapter):
    """A logger for one run: its fields go on every line, merged with a call's own `extra`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def for_run(
    logger: logging.Logger,
    run_id: int,
    script_name: str | None = None,
    base: str | None = None,
    node: str | None = None,
) -> RunLog:
    fields: Mapping[str, object] = {
        name: value
        for name, value in (("run_id", run_id), ("script_name", script_name), ("base", base), ("node", node))
        if value not in (None, "")
    }
    return RunLog(logger, dict(fields))
