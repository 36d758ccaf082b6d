"""One real pipeline for the operator-facing tests: stand-in SeaTable, gunicorn scheduler with two workers,
dispatcher, sandbox as the sandbox user; JSON logs on; metrics and status tokens set; a few finished runs."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.pipeline import Pipeline

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")


def chromium() -> str | None:
    """The browser Playwright drives: Debian's chromium, else (None) Playwright's own build, which ./dev installs
    where the distribution has no chromium package (Ubuntu's is a snap)."""
    return str(DEBIAN_CHROMIUM) if DEBIAN_CHROMIUM.exists() else None

OWNER = "ops@auth.local"
SCRIPTS = {
    "hello.py": "print('hello from the runner')\n",
    "broken.py": "print('about to fail')\nraise SystemExit(3)\n",
}


@dataclass
class Ops:
    """The pipeline plus what the tests ran on it and the credentials they need."""

    pipeline: Pipeline
    metrics_token: str
    status_token: str
    sandbox_metrics_token: str
    base_uuid: str
    runs: dict[str, dict[str, Any]]

    def scheduler_metrics(self, token: str | None = None) -> requests.Response:
        return requests.get(self.pipeline.scheduler_url + "/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {token or self.metrics_token}"})

    def sandbox_metrics(self, token: str | None = None) -> requests.Response:
        assert self.pipeline.sandbox is not None
        return requests.get(self.pipeline.sandbox.url + "/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {token or self.sandbox_metrics_token}"})

    def run(self, script_name: str) -> dict[str, Any]:
        final = self.pipeline.button(poll_interval=0.2).run(self.base_uuid, script_name, owner=OWNER, org_id=7,
                                                             deadline=120)
        self.runs[script_name] = final
        return final


@pytest.fixture(scope="package")
def ops(runner_image: str) -> Iterator[Ops]:
    """The whole pipeline (SQLite, real sandbox, gunicorn); runner_image: its lane is podman (tests/conftest.py)."""
    metrics_token, status_token, sandbox_metrics_token = (secrets.token_urlsafe(18) for _ in range(3))
    logs = {"LOG_FORMAT": "json"}
    pipeline = Pipeline(
        say=lambda _text: None,
        sandbox_env={"PYTHON_PROCESS_TIMEOUT": "30", "PYTHON_STARTER_THREAD_COUNT": "4",
                     "PYTHON_SANDBOX_METRICS_TOKEN": sandbox_metrics_token, **logs},
        scheduler_extra_env={"PYTHON_SCHEDULER_WORKERS": "2", "PYTHON_SCHEDULER_METRICS_TOKEN": metrics_token,
                             "PYTHON_SCHEDULER_STATUS_TOKEN": status_token, **logs},
    )
    with pipeline:
        assert pipeline.stub is not None
        base = pipeline.stub.seatable.add_base(name="Operators", tables=("Table1",))
        for name, code in SCRIPTS.items():
            pipeline.stub.seatable.add_script(base.uuid, name, code)
        ops = Ops(pipeline, metrics_token, status_token, sandbox_metrics_token, base.uuid, {})
        for name in (*SCRIPTS, "missing.py"):  # missing.py: SeaTable has no such script (fetch failed)
            ops.run(name)
        yield ops
