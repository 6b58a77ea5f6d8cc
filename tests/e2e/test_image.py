"""The image as an operator runs it: built from the Dockerfile, run as a non-root user, ``migrate``
then ``serve`` against a real PostgreSQL, a signed webhook taken, and ``docker stop`` a clean
shutdown within seconds.

Needs a Docker engine. No registry is reachable here, so the build starts ``FROM`` the local base
``LEDGER_IMAGE_BASE`` names (``../shared/tools/image-base`` makes one; CI does). Without an engine
the test says so and skips; with ``LEDGER_REQUIRE_DOCKER`` set (CI) that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ledger_cli.processes import free_port
from ledger_cli.scenarios import Checkout, checkout_events
from tests.conftest import cloned_database
from tests.support import API_TOKEN, SECRET, signed_headers

ROOT = Path(__file__).resolve().parents[2]
TAG = "flex-ledger:test"
pytestmark = pytest.mark.xdist_group("image")  # one worker builds the image once (--dist loadgroup)


def _unavailable(reason: str) -> None:
    if os.environ.get("LEDGER_REQUIRE_DOCKER"):  # CI: an image test that cannot run is a failure
        pytest.fail(reason)
    pytest.skip(reason)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        _unavailable("no docker command: install Docker (Debian: apt-get install docker.io) to test the image")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode != 0:
        _unavailable("no Docker daemon answers: start dockerd to test the image")
    base = os.environ.get("LEDGER_IMAGE_BASE", "").strip()
    build = ["build", "--network", "host", "-t", TAG, *(["--build-arg", f"BASE={base}"] if base else []), str(ROOT)]
    docker(*build, timeout=1800)
    return TAG


@pytest.fixture
def tcp_dsn(pg_server_dsn: str) -> Iterator[str]:
    """An empty database the container reaches over TCP on the host's network."""
    if not urlsplit(pg_server_dsn).hostname:
        pytest.skip(
            "the test database server is reached through a socket (the embedded one): the image test runs "
            "against a PostgreSQL server (LEDGER_TEST_DATABASE_URL), as CI's second pass does"
        )
    with cloned_database(pg_server_dsn, "template0", prefix="ledger_image") as dsn:
        yield dsn


def test_the_image_runs_as_a_user_with_the_ledger_command_and_no_embedded_database(image: str) -> None:
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["ledger"]
    assert config["Cmd"] == ["serve", "--host", "0.0.0.0"]  # noqa: S104 (reached from outside the container)
    uid = docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
    assert uid != "0"
    assert not any("SECRET" in e or "TOKEN" in e or "API_KEY" in e for e in config.get("Env") or [])
    assert "flex-ledger" in docker("run", "--rm", image, "--version").stdout
    same = docker("run", "--rm", "--entrypoint", "flex-ledger", image, "--version").stdout
    assert "flex-ledger" in same
    # no embedded PostgreSQL: the demo says what to install, in one line
    demo = docker("run", "--rm", image, "demo", check=False)
    assert demo.returncode != 0
    assert "pip install 'flex-ledger[embedded]'" in demo.stderr
    assert len(demo.stderr.strip().splitlines()) == 1


def test_migrate_serve_a_signed_webhook_and_a_clean_docker_stop(image: str, tcp_dsn: str) -> None:
    env = ["-e", f"LEDGER_DATABASE_URL={tcp_dsn}"]
    migrated = docker("run", "--rm", "--network", "host", *env, image, "migrate", timeout=300)
    assert "schema" in (migrated.stdout + migrated.stderr).lower()
    check = docker("run", "--rm", "--network", "host", *env, image, "migrate", "--check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr  # nothing pending once migrated

    port = free_port()
    name = f"flex-ledger-test-{uuid.uuid4().hex[:8]}"
    env += ["-e", f"LEDGER_WEBHOOK_SECRETS={SECRET}", "-e", f"LEDGER_API_TOKENS={API_TOKEN}"]
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        *env,
        image,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = json.loads(docker("inspect", name).stdout)[0]["State"]
            assert state["Running"], docker("logs", name).stderr[-3000:]
            assert time.monotonic() < deadline, docker("logs", name).stderr[-3000:]
            time.sleep(0.3)
        c = Checkout(seed=990)
        for event in checkout_events(c):
            body = json.dumps(event)
            reply = httpx.post(url + "/webhooks/flex", content=body, headers=signed_headers(body), timeout=30)
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"] == "accepted"
        forged = httpx.post(url + "/webhooks/flex", content=body, headers={"svix-id": "msg_x"}, timeout=30)
        assert forged.status_code == 401
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        deadline = time.monotonic() + 30
        while (order := httpx.get(f"{url}/v1/orders/{c.session_id}", headers=headers, timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, order.text
            time.sleep(0.2)
        assert order.json()["checkout_session_id"] == c.session_id

        started = time.monotonic()
        docker("stop", "--time", "30", name, timeout=60)
        stopped_in = time.monotonic() - started
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        logs = docker("logs", name)
        assert stopped_in < 10, f"docker stop took {stopped_in:.1f} s: SIGTERM did not reach the server"
        assert state["ExitCode"] == 0, logs.stdout[-2000:] + logs.stderr[-2000:]
        assert "Traceback" not in logs.stdout + logs.stderr
    finally:
        docker("rm", "-f", name, check=False)
