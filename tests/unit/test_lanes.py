"""Test lanes are derived from the fixtures a test uses (tests/conftest.py), never placed by hand."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import lane_markers, lane_of

TESTS = Path(__file__).resolve().parents[1]


def test_lanes_follow_the_fixture_closure_and_parameters() -> None:
    assert lane_markers(["tmp_path", "store"], {}) == set()
    assert lane_markers(["sandbox_factory", "sandbox_user", "sandbox_account"], {}) == {"podman"}
    assert lane_markers(["registry_image", "compose_host"], {}) == {"compose", "podman"}
    assert lane_markers(["backend", "store"], {"backend": "sqlite"}) == set()
    assert lane_markers(["backend", "store", "serve"], {"backend": "mariadb"}) == {"mariadb", "slow"}
    # Network namespaces and a pytest run of its own are real processes and hosts, not the fast lane's.
    assert lane_markers(["lan"], {}) == lane_markers(["netlab"], {}) == lane_markers(["pytester"], {}) == {"slow"}
    assert lane_of(set()) == "fast"
    assert lane_of({"mariadb", "slow"}) == "mariadb" and lane_of({"compose", "podman"}) == "compose"


def test_no_test_places_a_lane_marker_by_hand() -> None:
    """A hand-placed mark drifts from what the test really uses; add the fixture to FIXTURE_MARKERS instead."""
    hand = re.compile(r"pytest\.mark\.(podman|mariadb|compose|slow)\b")
    placed = [str(path.relative_to(TESTS)) for path in TESTS.rglob("*.py")
              if path.name != "conftest.py" and path.name != "test_lanes.py" and hand.search(path.read_text())]
    assert placed == []
