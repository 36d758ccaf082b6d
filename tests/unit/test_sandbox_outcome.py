"""Pure logic of outcomes, the control stream, result bodies and node health: no Podman, no HTTP."""

from __future__ import annotations

import json
import signal
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import texts
from sandbox.health import NodeHealth
from sandbox.outcome import EXIT_RECORD, READY, ControlStream, Evidence, ExitRecord, Outcome, decide
from sandbox.output import encode_body, fit_result
from sandbox.podman_api import PingFailure, describe


def record(status: int, cpu_s: float = 0.1, limit: tuple[int, int] = (65, 66)) -> bytes:
    body = {"status": status, "cpu_s": cpu_s, "cpu_limit_s": list(limit), "maxrss_kib": 9000}
    return EXIT_RECORD + json.dumps(body).encode() + b"\n"


def exited(code: int) -> int:
    return code << 8


@dataclass
class FakePodman:
    """What Podman would say after the container ended; counts the questions (they cost calls)."""

    code: int = 0
    oom: bool = False
    asked: int = 0

    def evidence(self) -> Evidence:
        def container_exit() -> int:
            self.asked += 1
            return self.code

        def oom_killed() -> bool:
            self.asked += 1
            return self.oom

        return Evidence(container_exit, oom_killed)


def outcome(control: ControlStream, podman: FakePodman | None = None, timed_out: bool = False) -> Outcome:
    return decide(timed_out, control, (podman or FakePodman()).evidence(), timeout=60, memory_limit="1 GiB",
                  cpu_limit_s=65)


def control_of(*chunks: bytes) -> ControlStream:
    control = ControlStream()
    for chunk in chunks:
        control.feed(chunk)
    return control


def test_an_ordinary_exit_asks_podman_nothing() -> None:
    podman = FakePodman()
    assert outcome(control_of(READY + b"\n", record(exited(0))), podman) == Outcome("exited", 0)
    assert outcome(control_of(record(exited(3))), podman) == Outcome("exited", 3)
    assert podman.asked == 0


def test_a_record_split_across_frames_is_read() -> None:
    whole = record(exited(7))
    control = control_of(*[whole[i:i + 5] for i in range(0, len(whole), 5)])
    assert outcome(control) == Outcome("exited", 7)


def test_sigkill_is_a_signal_not_out_of_memory() -> None:
    result = outcome(control_of(record(signal.SIGKILL)), FakePodman(code=137))
    assert result == Outcome("signal", 137, texts.KILLED_BY_SIGNAL.format(signal=9))


def test_sigkill_with_oom_evidence_is_out_of_memory() -> None:
    result = outcome(control_of(record(signal.SIGKILL)), FakePodman(code=137, oom=True))
    assert result.kind == "out_of_memory" and result.return_code == 137


@pytest.mark.parametrize(("status", "cpu_s", "limit", "code", "seconds"), [
    (signal.SIGXCPU, 1.0, (2, 5), 152, "1"),  # the kernel raised the soft limit by 1 s when it sent SIGXCPU
    (signal.SIGKILL, 1.9, (2, 2), 137, "2"),  # measured: a 2 s hard limit, 1.9 s reported by wait4
])
def test_the_cpu_time_limit_is_named(status: int, cpu_s: float, limit: tuple[int, int], code: int,
                                     seconds: str) -> None:
    result = outcome(control_of(record(status, cpu_s=cpu_s, limit=limit)))
    assert result == Outcome("cpu_limit", code, texts.CPU_LIMIT.format(seconds=seconds))


def test_an_early_sigkill_is_not_the_cpu_limit() -> None:
    assert outcome(control_of(record(signal.SIGKILL, cpu_s=1.0, limit=(65, 66)))).kind == "signal"


def test_memory_error_exit_is_out_of_memory() -> None:
    assert outcome(control_of(record(exited(137)))).kind == "out_of_memory"


def test_the_host_timer_wins() -> None:
    result = outcome(control_of(record(exited(0))), timed_out=True)
    assert result == Outcome("timeout", -1, texts.TIME_LIMIT.format(seconds=60))


def test_no_record_asks_podman() -> None:
    assert outcome(ControlStream(), FakePodman(code=137)).kind == "signal"
    assert outcome(ControlStream(), FakePodman(code=137, oom=True)).kind == "out_of_memory"
    failed = outcome(ControlStream(), FakePodman(code=1))
    assert failed.kind == "error" and failed.return_code is None and "exit code 1" in failed.notice


@pytest.mark.parametrize("line", [
    b"not json", b'{"status": "0"}', b'{"status": true}', b'{"status": 99999999}', b"{}", b"[1]",
    b'{"status": 0, "cpu_limit_s": "x"}',
])
def test_malformed_records_are_not_trusted(line: bytes) -> None:
    parsed = ExitRecord.parse(line)
    assert parsed is None or parsed.cpu_limit is None


def test_the_first_record_counts() -> None:
    control = control_of(record(exited(1)), record(exited(0)))
    assert outcome(control) == Outcome("exited", 1)


def test_a_newline_less_flood_is_bounded_and_scanned_once() -> None:
    """Issue 12: 3 such runs pinned the worker at 100 % CPU (buffered without limit, rescanned per frame)."""
    control = ControlStream()
    chunk = b"x" * 65536
    tracemalloc.start()
    for _ in range(160):  # 10 MiB
        control.feed(chunk)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert control.overflow and control.bytes_seen == 160 * 65536
    assert peak < 1 << 20, f"{peak} bytes held"
    control.feed(record(exited(0)))
    assert control.trusted_record() is None  # past the cap nothing on the stream is believed
    assert outcome(control, FakePodman(code=0)).kind == "error"


def test_notes_are_kept_short() -> None:
    control = control_of(b"runner: preimport of x failed\n" * 20)
    assert len(control.notes) == 5 and not control.overflow


EMOJI = "\U0001F600"


def body(output: str) -> dict[str, object]:
    return {"script_id": 9, "success": True, "return_code": 0, "output": output, "started_at": 1.5,
            "spend_time": 0.25}


def test_700000_emoji_fit_the_default_limit_as_utf8() -> None:
    raw = fit_result(body(EMOJI * 700_000), 8 << 20)
    assert len(raw) < 3 << 20  # 4 bytes each, not 12 (ensure_ascii)
    assert json.loads(raw)["output"] == EMOJI * 700_000


@pytest.mark.parametrize("output", [EMOJI * 700_000, "a\x01" * 500_000, "plain " * 400_000, "é" * 2_000_000])
def test_a_cut_body_fits_exactly_and_says_so(output: str) -> None:
    limit = 1_000_000
    raw = fit_result(body(output), limit)
    assert limit - 12 <= len(raw) <= limit
    sent = json.loads(raw)
    kept = sent["output"].rindex("\n[")
    assert sent["output"][:kept] == output[:kept]
    assert sent["output"][kept:] == texts.notice(texts.BODY_LIMIT.format(kept=kept, limit=limit))
    assert {k: v for k, v in sent.items() if k != "output"} == {k: v for k, v in body("").items() if k != "output"}


def test_a_body_that_fits_is_sent_as_is() -> None:
    assert fit_result(body("hi\n"), 4096) == encode_body(body("hi\n"))


@dataclass
class StubPodman:
    error: PingFailure | None = None
    image: bool = True
    image_error: Exception | None = None

    def ping_error(self) -> PingFailure | None:
        return self.error

    def image_exists(self, image: str) -> bool:
        if self.image_error is not None:
            raise self.image_error
        return self.image


@dataclass
class StubOutbox:
    size: int = 1000
    unusable: str | None = None

    def disk_bytes(self) -> int:
        return self.size

    def check_writable(self) -> str | None:
        return self.unusable


def test_node_health_names_every_problem(tmp_path: Path) -> None:
    podman, outbox = StubPodman(), StubOutbox()
    health = NodeHealth(podman, "img:1", outbox, tmp_path, outbox_max_bytes=10_000, min_free_bytes=0)
    assert health.refusal() == texts.STARTING
    health.check_now()
    assert health.problems() == [] and health.refusal() is None
    podman.image = False
    outbox.size = 20_000
    outbox.unusable = "disk I/O error"
    health.check_now()
    assert health.problems() == [texts.IMAGE_MISSING.format(image="img:1"),
                                 texts.OUTBOX_UNUSABLE.format(detail="disk I/O error"),
                                 texts.OUTBOX_FULL.format(size="19.5312 KiB", cap="9.76562 KiB")]
    podman.error = PingFailure("ConnectionRefusedError: [Errno 111] Connection refused", slow=False)
    health.check_now()
    assert health.problems()[0] == texts.PODMAN_UNREACHABLE.format(detail=podman.error.detail)


def test_a_slow_podman_counts_only_when_it_stays_slow(tmp_path: Path) -> None:
    """A loaded host answers late now and then: that alone must not turn work away."""
    podman = StubPodman()
    health = NodeHealth(podman, "img:1", StubOutbox(), tmp_path, outbox_max_bytes=10_000, min_free_bytes=0)
    podman.error = PingFailure("ReadTimeout: read timed out", slow=True)
    for _ in range(2):
        health.check_now()
        assert health.problems() == []
    health.check_now()
    assert health.problems() == [texts.PODMAN_UNREACHABLE.format(detail="ReadTimeout: read timed out")]
    podman.error = None
    health.check_now()
    assert health.problems() == []
    podman.image_error = RuntimeError("500 internal error")  # an error answer under load
    health.check_now()
    health.check_now()
    assert health.problems() == []
    health.check_now()
    assert health.problems() == [texts.PODMAN_UNREACHABLE.format(detail="RuntimeError: 500 internal error")]


def test_a_failed_podman_call_is_named_by_its_cause() -> None:
    """No socket or a refused connection counts at once; a timeout or an error answer may pass."""
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("http://d/v4.0.0/libpod/_ping (GET operation failed)") from inner
    except RuntimeError as exc:
        refused = describe(exc)
    assert refused == PingFailure("ConnectionRefusedError: [Errno 111] Connection refused", slow=False)
    assert describe(FileNotFoundError(2, "No such file or directory")).slow is False
    assert describe(TimeoutError("timed out")) == PingFailure("TimeoutError: timed out", slow=True)


def test_a_stalled_check_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    health = NodeHealth(StubPodman(), "img:1", StubOutbox(), tmp_path, outbox_max_bytes=10_000, min_free_bytes=0)
    health.check_now()
    later = time.monotonic() + 60
    monkeypatch.setattr("sandbox.health.time.monotonic", lambda: later)
    assert health.problems()[0].startswith("health check has not finished for 60 s")


def test_low_disk_is_a_problem(tmp_path: Path) -> None:
    health = NodeHealth(StubPodman(), "img:1", StubOutbox(), tmp_path, outbox_max_bytes=10_000,
                        min_free_bytes=1 << 62)
    health.check_now()
    assert health.problems()[0].startswith("disk almost full:")
