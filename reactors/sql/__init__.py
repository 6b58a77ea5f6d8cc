"""The reactors' SQL: the fulfillment queue, restocks, refund notes, reconcile runs, destinations and their
messages."""

from ledger.sql import Queries

__all__ = ["reactor_queries"]

reactor_queries = Queries.of_package(__name__)
