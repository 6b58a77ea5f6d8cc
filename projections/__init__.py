"""Read models derived from the event log (customers, subscriptions, orders, inventory)."""
