#!/usr/bin/env python3
"""Bootstrap for a fresh clone: needs only Python >= 3.11.

    python3 dev.py demo                            the tour: the real service on an embedded PostgreSQL,
                                                   a Flex stand-in and signed demo checkouts
    python3 dev.py serve [ledger serve options]   run the service (embedded PostgreSQL by default)
    python3 dev.py test [pytest options]           lint, type-check and run the whole test suite
    python3 dev.py COMMAND ...                     any other ledger command (status, rebuild, send, ...)

Creates ``.venv`` and installs the pinned versions from ``requirements*.lock`` (again only
when a lock file or pyproject.toml changed), then runs the command inside it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("LEDGER_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
WORKERS = max(1, min(4, os.cpu_count() or 1))  # pytest-xdist workers for the database tiers


def _digest(lock: str) -> str:
    return hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in (lock, "pyproject.toml"))).hexdigest()


def ensure_venv(lock: str, *, also_fine: tuple[str, ...] = ()) -> None:
    """Installs ``lock`` unless it (or a superset in ``also_fine``) is installed as it is now."""
    if sys.version_info < (3, 11):  # noqa: UP036 (this file runs before anything is installed)
        sys.exit(f"dev.py: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    for candidate in (lock, *also_fine):
        stamp = VENV / f".installed-{candidate}"
        if PYTHON.exists() and stamp.exists() and stamp.read_text() == _digest(candidate):
            return
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print(f"dev.py: installing {lock} into {VENV}", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(ROOT / lock)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    (VENV / f".installed-{lock}").write_text(_digest(lock))


def run(*cmd: str, env: dict[str, str] | None = None) -> int:
    # Ctrl-C reaches the child too; let it stop in its own way instead of dying here with a traceback.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def dev_secret(env: dict[str, str]) -> None:
    """For local runs only: a signing secret kept under the data dir when none is configured."""
    if env.get("LEDGER_WEBHOOK_SECRETS", "").strip():
        return
    data_dir = Path(env.get("LEDGER_DATA_DIR") or ".ledger")
    path = data_dir / "dev_webhook_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("whsec_" + __import__("base64").b64encode(secrets.token_bytes(32)).decode() + "\n")
        path.chmod(0o600)
    env["LEDGER_WEBHOOK_SECRETS"] = path.read_text().strip()
    print(f"dev.py: LEDGER_WEBHOOK_SECRETS is unset; using the development secret in {path}:", flush=True)
    print(f"dev.py:   {env['LEDGER_WEBHOOK_SECRETS']}", flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "test":
        ensure_venv("requirements-dev.lock")
        steps = [
            [str(BIN / "ruff"), "check", "."],
            [str(BIN / "mypy")],
            # The database-free unit tier first: seconds, and the first to say what broke.
            [str(PYTHON), "-m", "pytest", "tests/unit"],
            # The database tiers on every core (up to 4): each worker has its own databases.
            [str(PYTHON), "-m", "pytest", "-n", str(WORKERS), "--dist", "loadgroup", "tests/integration", "tests/e2e"],
        ]
        for step in steps if not rest else [[str(PYTHON), "-m", "pytest", *rest]]:
            print("dev.py: $", " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)), flush=True)
            code = run(*step)
            if code != 0:
                return code
        return 0
    ensure_venv("requirements.lock", also_fine=("requirements-dev.lock",))  # dev pins include the runtime ones
    env = dict(os.environ)
    if command == "serve":
        dev_secret(env)
    if command == "ledger":  # python3 dev.py ledger COMMAND ...
        command, rest = (rest[0], rest[1:]) if rest else ("--help", [])
    return run(str(BIN / "ledger"), command, *rest, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
