"""The fulfillment reactor's SQL: its queue."""

from ledger.sql import Queries

__all__ = ["queue_queries"]

queue_queries = Queries.of_package(__name__)
