"""Every projection, by name."""

from __future__ import annotations

from projections.base import Projection
from projections.customers import CUSTOMERS
from projections.inventory import INVENTORY
from projections.orders import ORDERS
from projections.subscriptions import SUBSCRIPTIONS

__all__ = ["PROJECTIONS", "get"]

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (ORDERS, CUSTOMERS, SUBSCRIPTIONS, INVENTORY)}


def get(name: str) -> Projection:
    try:
        return PROJECTIONS[name]
    except KeyError:
        raise KeyError(f"no projection named {name!r} (known: {', '.join(PROJECTIONS)})") from None
