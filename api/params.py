"""Query parameters that mean the same on every route, documented and checked once.

Optional parameters are declared ``Annotated[T, Parameter(...)] | None`` so that the document
keeps their limits; the framework does not check limits inside an optional type, so the routes
pass them through ``checked`` here, which answers 400 in the one error shape."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import Parameter

from ledger.errors import InvalidRequest

__all__ = ["Cursor", "MinPosition", "OrdersCursor", "PathId", "Position", "Text", "checked", "strict_query"]

MAX_POSITION = 2**53 - 1  # exact in JSON numbers (the document's limits are floats); far beyond any log
_NO_CONTROL = r"^[^\u0000-\u001f]+$"

Position = Annotated[int, Parameter(ge=0, le=MAX_POSITION, description="a log position")] | None
MinPosition = (
    Annotated[
        int,
        Parameter(ge=0, le=MAX_POSITION, description="wait (up to a few seconds) until this log position is applied"),
    ]
    | None
)
Cursor = Annotated[str, Parameter(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")] | None
OrdersCursor = (
    Annotated[
        str,
        Parameter(pattern=r"^-?[0-9]{1,18}:[^\u0000-\u001f]{1,255}$", description="next_cursor of the previous page"),
    ]
    | None
)
Text = Annotated[str, Parameter(min_length=1, max_length=255, pattern=_NO_CONTROL)] | None
# An id in a path (a session, customer or subscription): what the read routes can look up.
PathId = Annotated[str, Parameter(min_length=1, max_length=255, pattern=_NO_CONTROL)]


def checked(name: str, value: int | str | None) -> None:
    """Raises ``InvalidRequest`` for a value outside what the parameter's document says."""
    if value is None:
        return
    if isinstance(value, int):
        if not 0 <= value <= MAX_POSITION:
            raise InvalidRequest(f"{name} must be between 0 and {MAX_POSITION}")
        return
    if not value or len(value) > 255 or any(ord(c) < 0x20 for c in value):
        raise InvalidRequest(f"{name} must be 1 to 255 characters, none of them control characters")


def _takes_text(request: Request[Any, Any, Any], name: str) -> bool:
    """Whether the route's query parameter ``name`` is free text (not a number, a boolean, a time or
    one of a fixed set of words): read from the route's own signature."""
    field = request.route_handler.parsed_fn_signature.parameters.get(name)
    if field is None:
        return True
    kinds = [t.annotation for t in field.inner_types] if field.is_optional else [field.annotation]
    return all(kind is str for kind in kinds if kind is not type(None))


async def strict_query(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of the read API: every id in the path is 1 to 255 characters with no
    control character (a NUL cannot even be stored), every parameter is given once, and ``null``
    is not a number, a boolean or one of a fixed set of words."""
    for name, value in request.path_params.items():
        if isinstance(value, str):
            checked(name, value)
    seen: set[str] = set()
    for name, value in request.query_params.multi_items():
        if name in seen:
            raise InvalidRequest(f"{name}: give it once")
        seen.add(name)
        # The framework reads the text "null" as "not given" for an optional parameter that is not
        # text; a client that sends it means something, so it is refused.
        if value.strip().lower() == "null" and not _takes_text(request, name):
            raise InvalidRequest(f"{name}: null is not a value here; leave the parameter out instead")
