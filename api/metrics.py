"""Prometheus metrics (``GET /metrics``), one registry per app.

Counters and histograms are updated where things happen; the log head, projection positions
and lag, fulfillment queue sizes and reconcile runs are read from the database at scrape time,
so every process reports the same truth.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(
            "ledger_webhook_requests",
            "Webhook deliveries by outcome (accepted, duplicate, unauthorized, too_large, unprocessable, unavailable, error)"
            " and, for unauthorized ones, reason",
            ["outcome", "reason"],
            registry=r,
        )
        self.internal_errors = Counter(
            "ledger_internal_errors",
            "500s the API answered (each a bug, logged with its traceback; webhooks count theirs as outcome=error)",
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "ledger_webhook_ingest_seconds",
            "Time from a webhook's arrival to its reply, for deliveries that reached the log",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_size = Histogram(
            "ledger_append_batch_size",
            "Events per group-committed append transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.head = Gauge("ledger_log_head_position", "Position of the last event in the log", registry=r)
        self.position = Gauge(
            "ledger_projection_position", "Checkpoint of each projection and the reactor", ["projection"], registry=r
        )
        self.lag = Gauge(
            "ledger_projection_lag_events", "Events the checkpoint is behind the head", ["projection"], registry=r
        )
        self.failed_events = Gauge(
            "ledger_projection_failed_events",
            "Events a projection could not apply (live mode)",
            ["projection"],
            registry=r,
        )
        self.running = Gauge(
            "ledger_projection_running",
            "1 when some process holds the projection's runner lock",
            ["projection"],
            registry=r,
        )
        self.worker_failures = Gauge(
            "ledger_worker_failures",
            "Times each runner failed (its connection lost, an unexpected error) and restarted",
            ["projection"],
            registry=r,
        )
        self.fulfillment = Gauge(
            "ledger_fulfillment_sessions", "Completed sessions by fulfillment status", ["status"], registry=r
        )
        self.flex_seconds = Histogram(
            "ledger_flex_api_request_seconds",
            "Flex API call latency by HTTP status ('error' when no answer)",
            ["status"],
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.flex_errors = Counter(
            "ledger_flex_api_errors",
            "Flex API calls that failed, by HTTP status ('error' when no answer)",
            ["status"],
            registry=r,
        )

        self.syncs = Counter(
            "ledger_order_syncs",
            "POST /v1/orders/{id}/sync calls by outcome (known, recorded, not_found, flex_unavailable, unavailable, error)",
            ["outcome"],
            registry=r,
        )
        self.reconcile_runs = Gauge(
            "ledger_reconcile_runs", "Reconcile runs recorded, by outcome (ok, failed)", ["outcome"], registry=r
        )
        self.reconcile_recorded = Gauge(
            "ledger_reconcile_observations_recorded",
            "Observations reconcile runs recorded: state Flex's API showed that no webhook had brought (drift)",
            registry=r,
        )
        self.reconcile_missed = Gauge(
            "ledger_reconcile_missed_money",
            "Of the observations recorded, those of money a webhook should have told of: a completed checkout, "
            "a succeeded payment or refund",
            registry=r,
        )
        self.reconcile_skipped = Gauge(
            "ledger_reconcile_skipped_resources",
            "Resources Flex's API listed that reconcile runs could not record (no id, an id no index holds, "
            "\\u0000): skipped and reported, never blocking a run",
            registry=r,
        )
        self.reconcile_last_success = Gauge(
            "ledger_reconcile_last_success_timestamp_seconds",
            "When the last successful reconcile run finished (0: never)",
            registry=r,
        )
        self.reads_queued = Gauge(
            "ledger_reads_queued",
            "Reads under /v1 waiting for a turn (at most LEDGER_READ_POOL_SIZE at once)",
            registry=r,
        )
        self.reads_working = Gauge("ledger_reads_in_progress", "Reads under /v1 being worked on", registry=r)
        self.reconcile_running = Gauge(
            "ledger_reconcile_running", "1 when some process runs the automatic reconcile", registry=r
        )

    def follow_reads(self, admission: Any) -> None:
        """Reads waiting for a turn and being worked on (``api.admission.ReadAdmission``), as of the scrape."""
        self.reads_queued.set_function(lambda: admission.queued)
        self.reads_working.set_function(lambda: admission.working)

    def flex_call(self, status: int | None, seconds: float) -> None:
        label = str(status) if status is not None else "error"
        self.flex_seconds.labels(label).observe(seconds)
        if status is None or not 200 <= status < 300:
            self.flex_errors.labels(label).inc()

    def render(self, followers: list[dict[str, Any]] | None, reconcile: dict[str, Any] | None = None) -> bytes:
        """The exposition; ``followers`` (``projections.status``) and ``reconcile``
        (``projections.reconcile.reconcile_status``) when the database could be read."""
        if reconcile is not None:
            self.reconcile_runs.labels("ok").set(reconcile["runs"] - reconcile["failures"])
            self.reconcile_runs.labels("failed").set(reconcile["failures"])
            self.reconcile_recorded.set(reconcile["recorded"])
            self.reconcile_missed.set(reconcile["missed"])
            self.reconcile_skipped.set(reconcile["skipped"])
            last = reconcile["last_success_at"]
            self.reconcile_last_success.set(datetime.fromisoformat(last).timestamp() if last else 0)
            self.reconcile_running.set(1 if reconcile["runner"] == "running" else 0)
        for row in followers or ():
            self.head.set(row["head"])
            self.position.labels(row["name"]).set(row["position"])
            self.lag.labels(row["name"]).set(row["lag"])
            self.failed_events.labels(row["name"]).set(row["failed_events"])
            self.worker_failures.labels(row["name"]).set(row["worker_failures"])
            self.running.labels(row["name"]).set(1 if row["state"] in ("running", "degraded", "rebuilding") else 0)
            if row["name"] == "fulfillment":
                for status in ("pending", "failed", "fulfilled"):
                    self.fulfillment.labels(status).set(row[f"{status}_sessions"])
        return generate_latest(self.registry)
