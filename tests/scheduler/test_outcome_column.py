"""The result callback stores the sandbox's outcome kind in script_log.outcome (upstream's code ignores it)."""

from __future__ import annotations

from typing import Any

import pytest
from falcon import testing
from pony.orm import db_session

from scheduler.db import Store
from tests.scheduler.conftest import finish, new_run


def outcome_of(store: Store, run_id: int) -> Any:
    with db_session:
        return store.db.select("SELECT outcome FROM script_log WHERE id = $run_id", {"run_id": run_id})[0]


@pytest.mark.parametrize(("fields", "stored"), [
    ({"success": False, "return_code": -1, "outcome": "time_limit"}, "time_limit"),
    ({"success": True, "return_code": 0}, "success"),  # an upstream starter's result
    ({"success": False, "return_code": 1, "outcome": None}, "failed"),
    ({"success": False, "return_code": None, "lost": True, "outcome": "sandbox_error"}, "sandbox_lost"),
    ({"success": False, "return_code": 1, "outcome": "made_up"}, "failed"),
])  # fmt: skip
def test_result_callback_stores_the_outcome(client: testing.TestClient, store: Store, fields: dict[str, Any],
                                            stored: str) -> None:
    run_id = new_run(client)
    assert finish(client, run_id, **fields).status_code == 200
    assert outcome_of(store, run_id) == stored

