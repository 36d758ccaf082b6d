"""The README's status page picture from real runs: `python -m tests.operators.screenshot docs/status.png`.

Starts the whole pipeline (as the tests do), runs a few minutes of mixed scripts from three bases (successes,
exceptions, a time limit, an output limit, a missing script), then photographs /status/ in headless chromium.
"""

from __future__ import annotations

import random
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.operators.conftest import chromium
from tests.support.pipeline import Pipeline

SCRIPTS = {
    "import_rows.py": "import time\ntime.sleep(0.5)\nprint('imported 40 rows')\n",
    "send_invoice.py": "import time\ntime.sleep(1.5)\nprint('invoice sent')\n",
    "cleanup.py": "print('nothing to clean')\n",
    "sync_crm.py": "import random\nif random.random() < 0.4:\n    raise ConnectionError('CRM did not answer')\n"
    "print('synced')\n",
    "report.py": "import time\ntime.sleep(8)\n",  # past the 5 s limit
    "debug_dump.py": "print('x' * 5000)\n",  # past the output limit
}
MINUTES = 3


def main(target: str) -> int:
    status_token = secrets.token_urlsafe(18)
    pipeline = Pipeline(
        say=print,
        sandbox_env={"PYTHON_PROCESS_TIMEOUT": "5", "PYTHON_STARTER_THREAD_COUNT": "4",
                     "PYTHON_RUNNER_OUTPUT_LIMIT": "2000"},
        scheduler_extra_env={"PYTHON_SCHEDULER_STATUS_TOKEN": status_token},
    )
    with pipeline:
        assert pipeline.stub is not None
        bases = [pipeline.stub.seatable.add_base(name=name, tables=("Table1",)) for name in ("CRM", "Billing", "Ops")]
        for base in bases:
            for name, code in SCRIPTS.items():
                pipeline.stub.seatable.add_script(base.uuid, name, code)
        button = pipeline.button(poll_interval=0.5)
        names = [*SCRIPTS, "renamed.py"]  # renamed.py: not in the base any more (fetch failed)
        weights = [8, 4, 6, 5, 1, 1, 1]
        end = time.monotonic() + MINUTES * 60

        def user(n: int) -> None:
            rng = random.Random(n)
            while time.monotonic() < end:
                base = rng.choice(bases)
                button.run(base.uuid, rng.choices(names, weights)[0], owner=f"user{n}@auth.local", org_id=10 + n,
                           deadline=120)
                time.sleep(rng.uniform(1, 6))

        print(f"running scripts for {MINUTES} minutes")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(user, range(4)))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium())
            context = browser.new_context(http_credentials={"username": "ops", "password": status_token},
                                          viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(pipeline.scheduler_url + "/status/")
            page.wait_for_selector("#chart-minutes rect[data-kind]")
            page.screenshot(path=target, full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 1750})
            browser.close()
    print(f"wrote {Path(target).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/status.png"))
