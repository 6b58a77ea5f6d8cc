"""Fulfillment: a reactor, not a projection (it calls Flex), in a room of its own.

* ``reactor``: intake of completed sessions, the Line Items calls, and the exactly-once record
  of their outcome in the log;
* ``events``: the ledger events it appends (``ledger.line_items.fetched``, ``ledger.inventory.adjusted``,
  ``ledger.fulfillment.failed``, ``ledger.fulfillment.retry_requested``), which projections read;
* ``line_items``: reading a Line Items reply (pure; the orders fold uses it too);
* ``flex_client``: the outbound HTTP client for Flex's API.
"""
