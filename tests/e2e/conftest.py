from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cloned_database
from tests.support import OTHER_SECRET, SECRET, RunningServer, run_server

MAX_BYTES = 65_536
TOLERANCE = 600


@pytest.fixture(scope="module")
def module_db(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    with cloned_database(pg_server_dsn, template_db, "ledger_e2e") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def server(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The installed ``ledger serve`` with two secrets (rotation), a small body limit and a wider tolerance."""
    tmp: Path = tmp_path_factory.mktemp("serve")
    env = {
        "LEDGER_DATABASE_URL": module_db,
        "LEDGER_WEBHOOK_SECRETS": f"{OTHER_SECRET} {SECRET}",
        "LEDGER_WEBHOOK_MAX_BYTES": str(MAX_BYTES),
        "LEDGER_WEBHOOK_TOLERANCE": str(TOLERANCE),
    }
    with run_server(tmp, env) as running:
        yield running
