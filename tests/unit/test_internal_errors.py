"""A bug in a route is a 500 in the one error shape, logged and counted for /metrics."""

from __future__ import annotations

import logging

import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from api.errors import EXCEPTION_HANDLERS
from api.metrics import Metrics
from api.state import AppState


def test_a_route_that_fails_is_a_counted_500(caplog: pytest.LogCaptureFixture) -> None:
    @get("/boom")
    async def boom() -> None:
        raise ZeroDivisionError("a bug")

    metrics = Metrics()
    app = Litestar(
        [boom],
        state=AppState({"metrics": metrics}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        logging_config=None,
    )
    with TestClient(app) as client, caplog.at_level(logging.ERROR):
        replies = [client.get("/boom") for _ in range(2)]
    assert [r.status_code for r in replies] == [500, 500]
    assert replies[0].json() == {"error": {"code": "internal_error", "message": "internal error; it has been logged"}}
    assert b"ledger_internal_errors_total 2.0" in metrics.render(None)
    assert "ZeroDivisionError" in caplog.text
