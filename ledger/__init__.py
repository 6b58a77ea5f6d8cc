"""flex-ledger: an event-sourced order ledger for Flex (withflex.com) webhooks.

Layers, dependencies pointing one way: ``api`` -> ``projections`` -> ``ledger``.
This package holds the log itself: settings, signature verification, the envelope,
the database, the append path and the chain verifier.
"""

__version__ = "0.1.0"
