"""What reacts: the followers of the log that cause effects, never rebuilt.

* ``fulfillment``: the fulfillment reactor (intake of completed sessions, the Line Items calls, the
  exactly-once record of their outcome in the log) and its queue;
* ``restock``: restocks, as adjustments in the log, never more than was sold;
* ``reconcile``: asking Flex's API what the log lacks (reconcile runs, the success page's sync),
  and the automatic runner;
* ``flex_client``: the outbound HTTP client for Flex's API (all of it);
* ``sync``: the success page's sync of one session;
* outbound delivery to the merchant's systems: ``messages`` (derived from the log), ``destinations``
  (managing them), ``delivery`` (each destination a follower, and its sender), ``outbound_guard``
  (which addresses delivery may connect to);
* ``status``: how every follower of the log is doing (read models and reactors), for status,
  the API and the metrics;
* ``workers``: the background workers of a process, composed (projection runners, the reactor,
  the automatic reconcile, delivery).

They read and write the log (``ledger``) and read the read models (``projections``); what both
sides need (the ledger's own event types, line-item and refund reading) lives in ``projections``.
"""
