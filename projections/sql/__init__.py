"""The projections' SQL: checkpoints, locks, each projection's tables and reads, rebuild."""

from ledger.sql import Queries

__all__ = ["projection_queries"]

projection_queries = Queries.of_package(__name__)
