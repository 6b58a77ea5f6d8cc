"""``GET /v1/events``: the log itself, oldest first, cursor-paginated."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.params import Parameter

from api.params import Cursor, MinPosition, Position, Text, checked
from api.read_routes import fresh_headers
from api.schemas import ERRORS
from api.state import AppState
from ledger.errors import InvalidRequest
from ledger.log import LoggedEvent

__all__ = ["EventPage", "list_events", "parse_cursor"]


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    data: list[LoggedEvent]
    next_cursor: str | None


def parse_cursor(cursor: str | None, after: int | None) -> int:
    """A cursor is the last position of the previous page; ``after`` says the same in the clear."""
    if cursor is None:
        return after or 0
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise InvalidRequest("cursor is not one this API returned")
    return int(cursor)


@get("/events", operation_id="listEvents", summary="Read the event log", tags=["events"], responses=ERRORS)
async def list_events(
    state: AppState,
    after: Position = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    event_type: Text = None,
    cursor: Cursor = None,
    min_position: MinPosition = None,
) -> Response[EventPage]:
    checked("after", after)
    checked("event_type", event_type)
    headers = await fresh_headers(state, [], min_position)  # the log itself: its head
    rows = await state.read_log.list(after=parse_cursor(cursor, after), limit=limit, event_type=event_type)
    next_cursor = str(rows[-1].position) if len(rows) == limit else None
    return Response(EventPage(data=rows, next_cursor=next_cursor), headers=headers)
