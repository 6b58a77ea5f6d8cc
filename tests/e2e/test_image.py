"""The image as an operator runs it: built from the Dockerfile, run as a non-root user, ``migrate``
then ``serve`` against a real PostgreSQL, a signed webhook taken, and ``docker stop`` a clean
shutdown within seconds; and ``compose.yaml`` brought up whole (PostgreSQL, migrate, two serve,
work) until every service is healthy, taking webhooks on both servers.

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


def _compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    _unavailable("no Docker Compose: install it (Debian: apt-get install docker-compose) to test compose.yaml")
    raise AssertionError  # unreachable: _unavailable skips or fails


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


def _wait_healthy(compose: list[str], cwd: Path, env: dict[str, str], services: set[str], timeout: float = 240) -> None:
    def run(*args: str) -> str:
        return subprocess.run([*compose, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout

    deadline = time.monotonic() + timeout
    while True:
        ids = run("ps", "-q").split()
        states = {}
        for cid in ids:
            info = json.loads(docker("inspect", cid).stdout)[0]
            service = info["Config"]["Labels"].get("com.docker.compose.service")
            states[service] = info["State"]
        health = {s: (states.get(s) or {}).get("Health", {}).get("Status") for s in services}
        if all(h == "healthy" for h in health.values()):
            migrate = states.get("migrate")
            assert migrate is None or migrate["ExitCode"] == 0, migrate
            return
        assert time.monotonic() < deadline, f"not healthy: {health}\n{run('logs', '--tail', '30')[-6000:]}"
        time.sleep(2)


def test_compose_brings_up_postgres_migrate_two_servers_and_a_worker(image: str, tmp_path: Path) -> None:
    compose = _compose_command()
    base = os.environ.get("LEDGER_IMAGE_BASE", "").strip()
    postgres = "postgres:17"
    if base:  # no registry: PostgreSQL from Debian's packages on the local base, as the official image
        postgres = "flex-ledger-test/postgres:15"
        standin = ROOT / "tests" / "e2e" / "postgres_image"
        docker("build", "--network", "host", "--build-arg", f"BASE={base}", "-t", postgres, str(standin), timeout=900)
    # the shipped file and example settings, as a user copies them (the secrets filled in)
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    example = (ROOT / "flex-ledger.env.example").read_text()
    settings = example.replace("LEDGER_WEBHOOK_SECRETS=whsec_REPLACE_ME", f"LEDGER_WEBHOOK_SECRETS={SECRET}")
    settings = settings.replace("LEDGER_API_TOKENS=\n", f"LEDGER_API_TOKENS={API_TOKEN}\n")
    assert settings != example
    (tmp_path / "flex-ledger.env").write_text(settings)
    ports = [free_port(), free_port()]
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": f"ledgertest{uuid.uuid4().hex[:8]}",
        "LEDGER_IMAGE": image,
        "LEDGER_POSTGRES_IMAGE": postgres,
        "LEDGER_SERVE_1_PORT": str(ports[0]),
        "LEDGER_SERVE_2_PORT": str(ports[1]),
    }
    run = {"env": env, "cwd": tmp_path, "capture_output": True, "text": True, "timeout": 600, "check": False}
    try:
        up = subprocess.run([*compose, "up", "-d", "--no-build"], **run)  # type: ignore[call-overload]
        assert up.returncode == 0, up.stdout + up.stderr
        _wait_healthy(compose, tmp_path, env, {"postgres", "serve-1", "serve-2", "work"})
        c = Checkout(seed=991)
        last = 0
        for i, event in enumerate(checkout_events(c)):  # alternately to each server: one log
            body = json.dumps(event)
            reply = httpx.post(
                f"http://127.0.0.1:{ports[i % 2]}/webhooks/flex", content=body, headers=signed_headers(body), timeout=30
            )
            assert reply.status_code == 200, reply.text
            last = max(last, reply.json()["position"])
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        for port in ports:  # each server reads what both took, once `work` has projected it
            deadline = time.monotonic() + 30
            while True:
                order = httpx.get(
                    f"http://127.0.0.1:{port}/v1/orders/{c.session_id}",
                    params={"min_position": last},
                    headers=headers,
                    timeout=30,
                )
                if order.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert order.status_code == 200, order.text
            assert order.json()["amount_total"] == c.total
    finally:
        down = subprocess.run([*compose, "down", "-v", "--timeout", "20"], **run)  # type: ignore[call-overload]
        assert down.returncode == 0, down.stdout + down.stderr
