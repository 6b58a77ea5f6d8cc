"""The OpenAPI document, finished: what the framework cannot say by itself.

* ``POST /webhooks/flex`` is a raw ASGI route (``api/webhooks.py``), which litestar leaves out:
  its operation is added as written there.
* An optional query parameter is either sent with a value or not sent; litestar documents it as
  "the type or null", which a client (or a fuzzer) would send as the text ``null``. Here it is
  documented as its type, not required.
* Every ``/v1`` reply carries ``Ledger-Position`` (``api/read_routes.py:fresh_headers``): a header
  the routes set themselves, documented here once for all of them.
"""

from __future__ import annotations

from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Schema,
)

from api.webhooks import PATH as WEBHOOK_PATH
from api.webhooks import WEBHOOK_OPERATION

__all__ = ["finish"]


def _not_null(schema: Schema) -> Schema:
    """``schema`` without its ``null`` alternative (query parameters)."""
    if schema.one_of:
        others = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == OpenAPIType.NULL)]
        if len(others) == 1 and isinstance(others[0], Schema):
            return _not_null(others[0])
    if isinstance(schema.type, list) and OpenAPIType.NULL in schema.type:
        kept = [t for t in schema.type if t != OpenAPIType.NULL]
        schema.type = kept[0] if len(kept) == 1 else kept
    if schema.enum:
        schema.enum = [value for value in schema.enum if value is not None]
    return schema


def _operations(item: PathItem) -> list[Operation]:
    found = (item.get, item.put, item.post, item.delete, item.options, item.head, item.patch, item.trace)
    return [op for op in found if op is not None]


_POSITION = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    description="The log position through which every projection this route reads had applied when the read "
    "began (for /v1/events and /v1/reconcile: the log's head). Pass it as min_position to any other route to "
    "read at least as fresh.",
)


def finish(openapi: OpenAPI) -> None:
    """Completes the framework's document in place."""
    openapi.paths = {**(openapi.paths or {}), WEBHOOK_PATH: WEBHOOK_OPERATION}
    for path, item in openapi.paths.items():
        if not isinstance(item, PathItem):
            continue
        for operation in _operations(item):
            if path.startswith("/v1/"):
                for status, response in (operation.responses or {}).items():
                    if isinstance(response, OpenAPIResponse) and status in ("200", "404"):
                        response.headers = {**(response.headers or {}), "Ledger-Position": _POSITION}
            for parameter in operation.parameters or []:
                if (
                    isinstance(parameter, Parameter)
                    and parameter.param_in == "query"
                    and not parameter.required
                    and isinstance(parameter.schema, Schema)
                ):
                    parameter.schema = _not_null(parameter.schema)
