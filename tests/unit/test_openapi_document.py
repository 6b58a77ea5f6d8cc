"""The OpenAPI document as a client generator reads it: every operation named as a person would
name it, every error in the one shared shape, readiness and the webhook's signature headers
documented. Built from the app itself; no database is reached."""

from __future__ import annotations

import re
from typing import Any

import pytest

from api.app import create_app
from ledger.settings import load_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# litestar 2.25 asks for FromQuery[...] in place of plain typed query parameters (its 3.0 style);
# the routes keep the 2.x style the pinned release documents, so the warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:litestar.*")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app: Any = create_app(load_settings({"LEDGER_WEBHOOK_SECRETS": SECRET}), api_tokens=("t",))
    while not hasattr(app, "openapi_schema"):  # under the request-id middleware
        app = app.app
    return app.openapi_schema.to_schema()  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_every_operation_has_a_unique_camel_case_id(document: dict[str, Any]) -> None:
    ids = [op.get("operationId") for _, _, op in _operations(document)]
    assert all(isinstance(i, str) and re.fullmatch(r"(get|list|sync|receive)[A-Z][A-Za-z]+", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    by_route = {(m, p): op["operationId"] for m, p, op in _operations(document)}
    assert by_route[("get", "/v1/orders/{checkout_session_id}")] == "getOrder"
    assert by_route[("get", "/v1/orders")] == "listOrders"
    assert by_route[("post", "/v1/orders/{checkout_session_id}/sync")] == "syncOrder"
    assert by_route[("post", "/webhooks/flex")] == "receiveFlexWebhook"


def test_every_error_reply_is_the_one_shared_error_component(document: dict[str, Any]) -> None:
    assert "ErrorBody" in document["components"]["schemas"]
    errors = 0
    for _, path, op in _operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                errors += 1
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert errors > 40


def test_readiness_documents_ready_and_not_ready(document: dict[str, Any]) -> None:
    responses = document["paths"]["/readyz"]["get"]["responses"]
    assert set(responses) == {"200", "503"}
    ready = document["components"]["schemas"]["Readiness"]
    assert set(ready["properties"]) == {"status", "schema_version"}


def test_the_webhook_documents_its_signature_headers(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/webhooks/flex"]["post"]["parameters"]
    headers = {p["name"] for p in parameters if p["in"] == "header"}
    assert headers == {
        f"{prefix}-{part}" for prefix in ("webhook", "svix") for part in ("id", "timestamp", "signature")
    }
