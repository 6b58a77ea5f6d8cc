"""Read models derived from the event log (customers, subscriptions, orders, inventory): pure folds,
applied in batches by one runner each, rebuildable blue/green; the machinery that follows the log
(follower, coordination, freshness, registry, rebuild, upgrade); the read side (documents,
history); and what the folds and the reactors above both read (the ledger's own event types,
line items, observations, Flex objects' fields). Nothing here calls Flex or causes an effect:
that is ``reactors``.
"""
