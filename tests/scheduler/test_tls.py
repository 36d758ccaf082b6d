"""The scheduler serving HTTPS with a certificate from a CA made in the test (real gunicorn, real TLS)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from sandbox.tls import plain_http_to_tls, tls_reason
from scheduler.config import Config, ConfigError
from tests.scheduler.conftest import AUTH, REPO, RunningServer, free_port
from tests.support.tls import authority


def test_https_good_certificate_works_and_wrong_ones_fail_clearly(
    make_env: Callable[..., dict[str, str]], serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    ca = authority(tmp_path / "ca")
    stranger = authority(tmp_path / "other-ca", "stranger-ca")
    server_pair = ca.issue("scheduler")  # names localhost only
    client = ca.issue("dispatcher")
    env = make_env(PYTHON_SCHEDULER_TLS_CERT=server_pair.cert, PYTHON_SCHEDULER_TLS_KEY=server_pair.key)
    server = serve(env, ca_bundle=ca.pem)
    port = server.url.rsplit(":", 1)[1]

    good = requests.get(f"https://localhost:{port}/admin/runs/", headers=AUTH, verify=ca.pem, timeout=10)
    assert good.status_code == 200 and good.json()["total_count"] == 0

    with pytest.raises(requests.exceptions.SSLError) as wrong_ca:
        requests.get(f"https://localhost:{port}/ping/", verify=stranger.pem, timeout=10)
    assert "not signed by a trusted CA" in tls_reason(wrong_ca.value)

    with pytest.raises(requests.exceptions.SSLError) as wrong_host:
        requests.get(f"https://127.0.0.1:{port}/ping/", verify=ca.pem, timeout=10)
    assert "does not name this host" in tls_reason(wrong_host.value)

    with pytest.raises(requests.ConnectionError) as plain:
        requests.get(f"http://localhost:{port}/ping/", timeout=10)
    assert plain_http_to_tls(plain.value)

    # A client certificate is not needed here; with one the answer is the same.
    with_cert = requests.get(f"https://localhost:{port}/ping/", verify=ca.pem, cert=(client.cert, client.key),
                             timeout=10)
    assert with_cert.text == "Pong"
    assert "Traceback" not in server.log()


def test_client_certificates_required(make_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    """With PYTHON_SCHEDULER_TLS_CLIENT_CA only clients holding a certificate that CA signed get an answer."""
    ca = authority(tmp_path / "ca")
    stranger = authority(tmp_path / "other-ca", "stranger-ca")
    server_pair, client, foreign = ca.issue("scheduler"), ca.issue("sandbox"), stranger.issue("intruder")
    port = free_port()
    env = {
        "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHON_SCHEDULER_PORT": str(port),
        **make_env(PYTHON_SCHEDULER_TLS_CERT=server_pair.cert, PYTHON_SCHEDULER_TLS_KEY=server_pair.key,
                   PYTHON_SCHEDULER_TLS_CLIENT_CA=ca.pem),
    }  # fmt: skip
    log_path = tmp_path / "mtls.log"
    with open(log_path, "wb") as log_file:  # the shared helper's readiness poll has no client certificate
        process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "serve", "--migrate"], cwd=REPO,
                                   env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"https://localhost:{port}/ping/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url, verify=ca.pem, cert=(client.cert, client.key), timeout=2).text == "Pong":
                    break
            except requests.RequestException:
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        for cert in (None, (foreign.cert, foreign.key)):
            with pytest.raises(requests.ConnectionError):
                requests.get(url, verify=ca.pem, cert=cert, timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_tls_settings_are_checked_at_start(tmp_path: Path) -> None:
    base = {"PYTHON_SCHEDULER_AUTH_TOKEN": "x"}
    with pytest.raises(ConfigError, match="PYTHON_SCHEDULER_TLS_CERT and PYTHON_SCHEDULER_TLS_KEY go together"):
        Config.from_env({**base, "PYTHON_SCHEDULER_TLS_CERT": "/etc/hostname"})
    with pytest.raises(ConfigError, match="cannot read it"):
        Config.from_env({**base, "PYTHON_SANDBOX_CA_BUNDLE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="needs PYTHON_SCHEDULER_TLS_CERT"):
        Config.from_env({**base, "PYTHON_SCHEDULER_TLS_CLIENT_CA": "/etc/hostname"})
