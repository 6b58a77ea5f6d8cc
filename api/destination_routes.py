"""Read routes about outbound delivery: the destinations (never their secrets) and their messages.
Destinations are managed with ``ledger destinations …`` and in the console."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Response, get
from litestar.params import Parameter

from api.params import MinPosition, PathId
from api.read_routes import fresh_headers
from api.schemas import ok
from api.state import AppState
from ledger.db import connection
from reactors import destinations
from reactors.destinations import Destination, MessagePage

__all__ = ["DESTINATION_ROUTES"]


class DestinationList(msgspec.Struct):
    data: list[Destination]


@get(
    "/destinations",
    operation_id="listDestinations",
    summary="Outbound destinations: state, lag and message counts (secrets are never shown)",
    tags=["delivery"],
    responses=ok(DestinationList, "Every destination, oldest first"),
)
async def list_destinations(state: AppState, min_position: MinPosition = None) -> Response[Any]:
    headers = await fresh_headers(state, [], min_position)
    async with connection(state.pool) as conn:
        return Response(DestinationList(await destinations.list_all(conn)), headers=headers)


@get(
    "/destinations/{destination_id:str}",
    operation_id="getDestination",
    summary="One outbound destination",
    tags=["delivery"],
    responses=ok(Destination, "The destination", can_404=True),
)
async def get_destination(state: AppState, destination_id: PathId, min_position: MinPosition = None) -> Response[Any]:
    headers = await fresh_headers(state, [], min_position)
    async with connection(state.pool) as conn:
        return Response(await destinations.get(conn, destination_id), headers=headers)


@get(
    "/destinations/{destination_id:str}/messages",
    operation_id="listDestinationMessages",
    summary="A destination's messages in log order, of one status or all",
    tags=["delivery"],
    responses=ok(MessagePage, "A page of messages", can_404=True),
)
async def list_destination_messages(
    state: AppState,
    destination_id: PathId,
    status: Literal["retrying", "failed", "delivered"] | None = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Parameter(max_length=300, description="next_cursor of the previous page")] = None,
    min_position: MinPosition = None,
) -> Response[Any]:
    headers = await fresh_headers(state, [], min_position)
    async with connection(state.pool) as conn:
        page = await destinations.messages(conn, destination_id, status=status, limit=limit, cursor=cursor)
    return Response(page, headers=headers)


DESTINATION_ROUTES = [list_destinations, get_destination, list_destination_messages]
