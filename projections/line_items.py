"""Line items as the Line Items API returns them, read permissively: no HTTP here.

``price`` may be an object or an id, ``product`` nested or an id; unknown fields and extra
top-level keys are ignored. The fulfillment reactor reads Flex's reply with it, and the orders
projection reads the same reply again from the log.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ledger.envelope import MAX_KEY_BYTES, has_nul, oversized_key

__all__ = [
    "MAX_QUANTITY",
    "LineItem",
    "UnusableLineItems",
    "check_line_items",
    "parse_line_items",
    "parse_subscription_items",
]

# More of one line item than any order holds: a quantity beyond it is a reply nothing can trust.
MAX_QUANTITY = 1_000_000


class UnusableLineItems(ValueError):
    """The reply cannot be read as line items (trying again will not help)."""


class LineItem(msgspec.Struct, frozen=True, kw_only=True):
    line_item_id: str
    price_id: str | None
    product_id: str | None
    upc_code: str | None
    description: str | None
    quantity: int
    amount_total: int | None
    amount_subtotal: int | None = None
    amount_discount: int | None = None
    amount_tax: int | None = None
    amount_shipping: int | None = None
    eligibility: str | None = None  # HSA/FSA eligibility, e.g. "auto_substantiation", "not_eligible"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _price_and_product(item: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """An item's price id, product id and UPC: ``price`` an object or an id, ``product`` nested in
    it, beside it, or an id."""
    price = item.get("price")
    price_id = _str(price) if not isinstance(price, dict) else _str(price.get("price_id")) or _str(price.get("id"))
    product = price.get("product") if isinstance(price, dict) else None
    product = product if product is not None else item.get("product")
    if isinstance(product, dict):
        return price_id, _str(product.get("product_id")) or _str(product.get("id")), _str(product.get("upc_code"))
    return price_id, _str(product), None


def parse_subscription_items(body: Any) -> tuple[list[dict[str, Any]], list[LineItem]]:
    """A subscription's items (``GET /subscriptions/{id}``: ``{"subscription": {"items": [...]}}``)
    as what a renewal fulfills: one ``LineItem`` per item, its id the ``subscription_item_id``."""
    subscription = body.get("subscription", body) if isinstance(body, dict) else None
    items = subscription.get("items") if isinstance(subscription, dict) else None
    if isinstance(items, dict):  # a list object ({"data": [...]}), as Stripe nests them
        items = items.get("data")
    if not isinstance(items, list):
        raise UnusableLineItems("the subscription has no items list")
    raw: list[dict[str, Any]] = []
    parsed: list[LineItem] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        item_id = _str(item.get("subscription_item_id")) or _str(item.get("id"))
        quantity = _int(item.get("quantity", 1))
        if item_id is None or quantity is None:
            raise UnusableLineItems(f"a subscription item lacks an id or a whole quantity: {str(item)[:200]}")
        price_id, product_id, upc = _price_and_product(item)
        price = item.get("price")
        unit = _int(price.get("unit_amount")) if isinstance(price, dict) else None
        raw.append(item)
        parsed.append(
            LineItem(
                line_item_id=item_id,
                price_id=price_id or _str(item.get("price_id")),
                product_id=product_id or _str(item.get("product_id")),
                upc_code=upc,
                description=_str(item.get("description")),
                quantity=quantity,
                amount_total=unit * quantity if unit is not None else None,
            )
        )
    return raw, parsed


def parse_line_items(body: Any) -> tuple[list[dict[str, Any]], list[LineItem]]:
    """The raw items (kept as returned) and what fulfillment needs from each."""
    items = body.get("line_items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise UnusableLineItems("the Line Items API answer has no line_items list")
    raw: list[dict[str, Any]] = []
    parsed: list[LineItem] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        line_item_id = _str(item.get("line_item_id")) or _str(item.get("id"))
        quantity = _int(item.get("quantity"))
        if line_item_id is None or quantity is None:
            raise UnusableLineItems(f"a line item lacks an id or a whole quantity: {str(item)[:200]}")
        price_id, product_id, upc = _price_and_product(item)
        raw.append(item)
        parsed.append(
            LineItem(
                line_item_id=line_item_id,
                price_id=price_id or _str(item.get("price_id")),
                product_id=product_id or _str(item.get("product_id")),
                upc_code=upc,
                description=_str(item.get("description")),
                quantity=quantity,
                amount_total=_int(item.get("amount_total")),
                amount_subtotal=_int(item.get("amount_subtotal")),
                amount_discount=_int(item.get("amount_discount")),
                amount_tax=_int(item.get("amount_tax")),
                amount_shipping=_int(item.get("amount_shipping")),
                eligibility=_str(item.get("eligibility")),
            )
        )
    return raw, parsed


def check_line_items(raw: list[dict[str, Any]], items: list[LineItem]) -> None:
    """What fulfillment may act on, checked before anything is recorded: raises
    ``UnusableLineItems`` saying what is wrong. Each quantity a whole number from 1 to
    ``MAX_QUANTITY``; each line item id once; every id one an index can hold; no ``\\u0000``
    (the log cannot store it)."""
    seen: set[str] = set()
    for item, parsed in zip(raw, items, strict=True):
        if not 1 <= parsed.quantity <= MAX_QUANTITY:
            raise UnusableLineItems(
                f"line item {parsed.line_item_id[:80]!r} has quantity {parsed.quantity}, "
                f"not a whole number from 1 to {MAX_QUANTITY}"
            )
        if parsed.line_item_id in seen:
            raise UnusableLineItems(f"line item {parsed.line_item_id[:80]!r} is listed twice")
        seen.add(parsed.line_item_id)
        if len(parsed.line_item_id.encode()) > MAX_KEY_BYTES or oversized_key(item) is not None:
            raise UnusableLineItems(f"a line item holds an id longer than {MAX_KEY_BYTES} bytes")
        if has_nul(item):
            raise UnusableLineItems(f"line item {parsed.line_item_id[:80]!r} holds a \\u0000 character")
