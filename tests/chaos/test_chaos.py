"""The quick form of `./dev chaos`: one fault per seam under a small load, with real processes throughout.

Target for every fault: no run executed twice, none stuck, no result lost, no runner container left behind,
every run finished with its own output or a clear failure text.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.faults import FAULTS, QUICK, Fault, Plan, run_fault
from tests.chaos.harness import Chaos, Settings

PLAN = Plan(runs=6, quick=True, big_emoji=300_000, settle_secs=180)


@pytest.fixture(scope="module")
def chaos(runner_image: str) -> Iterator[Chaos]:
    harness = Chaos(Settings(slots=3, max_body_bytes=1 << 20), say=lambda _text: None)
    try:
        yield harness.start()
    finally:
        harness.stop()


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.name in QUICK], ids=lambda f: f.seam.replace(" ", "-"))
def test_every_run_ends_once_with_its_own_output_or_a_clear_text(chaos: Chaos, fault: Fault) -> None:
    row = run_fault(chaos, fault, PLAN, org_id=8000 + FAULTS.index(fault))
    assert row.ok, f"{row.cells()}\n" + "\n".join(row.notes) + "\n" + chaos.logs()
