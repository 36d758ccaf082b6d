"""Log formatting and log settings of both services (pure logic: formatters on records, config parsing)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from observability import logs
from sandbox.config import SandboxConfig, log_settings
from scheduler.config import Config, ConfigError

FORGED = "evil.py\n2030-01-01 00:00:00,000 ERROR scheduler.runs: all runs deleted\r\x1b[2K"


def emit(formatter: logging.Formatter, *args: object, **fields: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    run_log = logs.for_run(logger, 42, **fields)
    run_log.info(*args)
    return stream.getvalue()


def test_plain_lines_carry_the_run_fields_and_cannot_be_forged() -> None:
    text = emit(logs.PlainFormatter(), "queued (%s)", FORGED, script_name=FORGED, base="b" * 32, node="n1")
    assert text.count("\n") == 1, text  # one physical line, whatever the name holds
    assert "\\n2030-01-01" in text and "\\x1b" in text and "\\r" in text
    assert text.rstrip("\n").endswith(f"[run_id=42 script_name={logs.escape(FORGED)} base={'b' * 32} node=n1]")


def test_plain_tracebacks_are_indented_so_no_line_starts_like_a_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.PlainFormatter())
    logger = logging.getLogger("test.logs.traceback")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        raise ValueError(FORGED)
    except ValueError:
        logger.exception("boom")
    first, *rest = stream.getvalue().rstrip("\n").split("\n")
    assert first.endswith("boom") and rest
    assert all(line.startswith("    ") for line in rest), rest


def test_json_lines_hold_the_fields_as_keys() -> None:
    text = emit(logs.json_formatter(), "finished: %s", "success", script_name=FORGED, base="b1", node="n1")
    assert text.count("\n") == 1
    record = json.loads(text)
    assert record["message"] == "finished: success"
    assert (record["run_id"], record["script_name"], record["base"], record["node"]) == (42, FORGED, "b1", "n1")
    assert record["level"] == "INFO" and record["logger"].startswith("test.logs") and record["time"]


def test_fields_left_out_when_unknown_and_merged_with_a_calls_extra() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter())
    logger = logging.getLogger("test.logs.merge")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logs.for_run(logger, 7, node="n2").info("x", extra={"attempt": 2})
    record = json.loads(stream.getvalue())
    assert record["run_id"] == 7 and record["node"] == "n2" and record["attempt"] == 2
    assert "script_name" not in record and "base" not in record


def test_configure_writes_to_stdout_or_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("INFO", "json", to_stdout=True)
        logging.getLogger("test.logs.stream").info("to stdout")
        logs.configure("WARNING", "plain", to_stdout=False)
        logging.getLogger("test.logs.stream").info("dropped: below WARNING")
        logging.getLogger("test.logs.stream").warning("to stderr")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    out, err = capsys.readouterr()
    assert json.loads(out)["message"] == "to stdout"
    assert "to stderr" in err and "dropped" not in err and "to stdout" not in err


TOKENS = {"PYTHON_SANDBOX_AUTH_TOKEN": "a", "PYTHON_SCHEDULER_AUTH_TOKEN": "b", "HOME": "/home/x"}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("INFO", "plain", False)),
    ({"PYTHON_STARTER_LOG_LEVEL": "debug"}, ("DEBUG", "plain", False)),  # upstream's name, used when ours is unset
    ({"PYTHON_STARTER_LOG_LEVEL": "DEBUG", "PYTHON_SANDBOX_LOG_LEVEL": "warning"}, ("WARNING", "plain", False)),
    ({"LOG_FORMAT": "JSON", "LOG_TO_STDOUT": "true"}, ("INFO", "json", True)),
])  # fmt: skip
def test_sandbox_log_settings(env: dict[str, str], expected: tuple[str, str, bool]) -> None:
    assert tuple(log_settings(env)) == expected
    config = SandboxConfig.from_env({**TOKENS, **env})
    assert (config.log_level, config.log_format, config.log_to_stdout) == expected


@pytest.mark.parametrize("env", [
    {"PYTHON_SANDBOX_LOG_LEVEL": "verbose"},
    {"PYTHON_STARTER_LOG_LEVEL": "TRACE"},
    {"LOG_FORMAT": "xml"},
    {"LOG_TO_STDOUT": "maybe"},
])  # fmt: skip
def test_sandbox_refuses_bad_log_settings(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(env))):
        SandboxConfig.from_env({**TOKENS, **env})


def test_scheduler_log_settings() -> None:
    config = Config.from_env({"LOG_FORMAT": "json", "LOG_TO_STDOUT": "1"})
    assert (config.log_format, config.log_to_stdout) == ("json", True)
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Config.from_env({"LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="LOG_TO_STDOUT"):
        Config.from_env({"LOG_TO_STDOUT": "perhaps"})
