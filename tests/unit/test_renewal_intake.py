"""What Flex leaves uncertain about subscriptions and invoices, read every documented way: a paid
invoice by either event name or by an observation, its id as invoice_id or id, its subscription as
an id or an object; a subscription item's price as an id or an object, items as a list or a list
object."""

from __future__ import annotations

from typing import Any

import pytest

from projections.base import LogRow
from projections.line_items import UnusableLineItems, parse_subscription_items
from reactors.renewals import paid_invoices


def _row(position: int, event_type: str, invoice: dict[str, Any], **payload: Any) -> LogRow:
    return LogRow(position=position, event_type=event_type, payload={"object": {"invoice": invoice}, **payload})


def test_either_paid_event_or_a_paid_observation_queues_the_invoice_once() -> None:
    rows = [
        _row(1, "invoice.paid", {"invoice_id": "in_1", "subscription": "fsub_1", "status": "paid"}),
        _row(2, "invoice.payment_succeeded", {"invoice_id": "in_1", "subscription": "fsub_1"}),
        _row(3, "invoice.payment_succeeded", {"id": "in_2", "subscription": {"subscription_id": "fsub_2"}}),
        _row(4, "invoice.observed", {"invoice_id": "in_3", "subscription_id": "fsub_3", "status": "paid"}),
        _row(5, "invoice.observed", {"invoice_id": "in_4", "subscription": "fsub_3", "status": "open"}),
        _row(6, "invoice.payment_failed", {"invoice_id": "in_5", "subscription": "fsub_3"}),
        _row(7, "invoice.paid", {"invoice_id": "in_6", "subscription": "fsub_9", "test_mode": True}),
    ]
    assert paid_invoices(rows) == {
        "in_1": (1, False, "fsub_1"),
        "in_2": (3, False, "fsub_2"),
        "in_3": (4, False, "fsub_3"),
        "in_6": (7, True, "fsub_9"),
    }


@pytest.mark.parametrize(
    ("reason", "queued"),
    [("subscription_create", False), ("manual", False), ("subscription_cycle", True), (None, True)],
)
def test_an_invoice_flex_says_is_no_renewal_is_not_queued(reason: str | None, queued: bool) -> None:
    invoice = {"invoice_id": "in_1", "subscription": "fsub_1", "billing_reason": reason}
    assert bool(paid_invoices([_row(1, "invoice.paid", invoice)])) is queued


def test_subscription_items_with_a_price_id_or_a_price_object() -> None:
    body = {
        "subscription": {
            "items": [
                {"subscription_item_id": "si_1", "quantity": 2, "price": "fprice_1"},
                {
                    "id": "si_2",
                    "price": {
                        "price_id": "fprice_2",
                        "unit_amount": 1500,
                        "product": {"product_id": "fprod_2", "upc_code": "012"},
                    },
                },
            ]
        }
    }
    raw, items = parse_subscription_items(body)
    assert raw == body["subscription"]["items"]
    assert [(i.line_item_id, i.price_id, i.product_id, i.upc_code, i.quantity, i.amount_total) for i in items] == [
        ("si_1", "fprice_1", None, None, 2, None),
        ("si_2", "fprice_2", "fprod_2", "012", 1, 1500),  # no quantity: one
    ]
    _, listed = parse_subscription_items({"items": {"data": [{"id": "si_3", "quantity": 1, "price": "fprice_3"}]}})
    assert [i.line_item_id for i in listed] == ["si_3"]


@pytest.mark.parametrize(
    "body",
    [
        {"subscription": {}},
        {"subscription": {"items": [{"quantity": 1}]}},
        {"items": [{"id": "si_1", "quantity": "2"}]},
    ],
)
def test_unusable_subscription_items_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(UnusableLineItems):
        parse_subscription_items(body)
