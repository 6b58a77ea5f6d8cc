"""Prometheus metrics (``GET /metrics``; ``ledger work`` serves them on ``LEDGER_METRICS_PORT``),
one registry per process.

Counters and histograms are updated where things happen; the log head, projection positions
and lag, fulfillment queue sizes and reconcile runs are read from the database at scrape time,
so every process reports the same truth. Whatever only grows is a counter (``…_total``), also
when its value is read from the database (``_Recorded``). ``ledger_build_info`` says which release
and schema; the process and platform collectors say how the process is doing.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

import ledger
from ledger.db import SCHEMA_VERSION
from reactors.delivery import Outcome
from reactors.destinations import Destination
from reactors.reconcile import ReconcileStatus
from reactors.status import FollowerStatus

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


# Counts kept in the database that only grow: (name, help, label, how to read them).
_RECORDED_FOLLOWERS = (
    (
        "ledger_projection_failed_events",
        "Events a projection (or the reactor) could not apply and skipped",
        "failed_events",
    ),
    (
        "ledger_worker_failures",
        "Times each runner failed (its connection lost, an unexpected error) and restarted",
        "worker_failures",
    ),
)
_RECORDED_RECONCILE = (
    (
        "ledger_reconcile_observations_recorded",
        "Observations reconcile runs recorded: state Flex's API showed that no webhook had brought (drift)",
        "recorded",
    ),
    (
        "ledger_reconcile_missed_money",
        "Of the observations recorded, those of money a webhook should have told of: a completed checkout, "
        "a succeeded payment or refund",
        "missed",
    ),
    (
        "ledger_reconcile_skipped_resources",
        "Resources Flex's API listed that reconcile runs could not record (no id, an id no index holds, "
        "\\u0000): skipped and reported, never blocking a run",
        "skipped",
    ),
)


class _Recorded(Collector):
    """Counters whose values live in the database (``projection_state``, ``reconcile_runs``), as of
    the last scrape that could read it; absent until one could."""

    def __init__(self) -> None:
        self.followers: list[FollowerStatus] | None = None
        self.reconcile: ReconcileStatus | None = None
        self.destinations: list[Destination] | None = None

    def collect(self) -> Iterator[Metric]:
        for name, help_text, field in _RECORDED_FOLLOWERS:
            family = CounterMetricFamily(name, help_text, labels=["projection"])
            for row in self.followers or ():
                family.add_metric([row.name], getattr(row, field))
            yield family
        runs = CounterMetricFamily("ledger_reconcile_runs", "Reconcile runs recorded, by outcome", labels=["outcome"])
        if self.reconcile is not None:
            runs.add_metric(["ok"], self.reconcile.runs - self.reconcile.failures)
            runs.add_metric(["failed"], self.reconcile.failures)
        yield runs
        for name, help_text, field in _RECORDED_RECONCILE:
            family = CounterMetricFamily(name, help_text)
            if self.reconcile is not None:
                family.add_metric([], getattr(self.reconcile, field))
            yield family
        lag = GaugeMetricFamily(
            "ledger_destination_lag",
            "Log positions a destination has not derived messages from yet",
            labels=["destination"],
        )
        messages = GaugeMetricFamily(
            "ledger_destination_messages",
            "A destination's messages by status (retrying | failed | delivered)",
            labels=["destination", "status"],
        )
        enabled = GaugeMetricFamily(
            "ledger_destination_enabled",
            "1 while a destination is enabled (0: disabled, or by a 410)",
            labels=["destination"],
        )
        for d in self.destinations or ():
            lag.add_metric([d.id], d.lag)
            enabled.add_metric([d.id], 1 if d.state == "enabled" else 0)
            for status in ("retrying", "failed", "delivered"):
                messages.add_metric([d.id, status], getattr(d, status))
        yield lag
        yield messages
        yield enabled


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.recorded = _Recorded()
        r.register(self.recorded)
        Gauge(
            "ledger_build_info",
            "The running release (always 1)",
            ["version", "schema_version", "python"],
            registry=r,
        ).labels(ledger.__version__, str(SCHEMA_VERSION), platform.python_version()).set(1)
        self.webhooks = Counter(
            "ledger_webhook_requests",
            "Webhook deliveries by outcome (accepted, duplicate, unauthorized, too_large, unprocessable, unavailable, "
            "error)"
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
        self.running = Gauge(
            "ledger_projection_running",
            "1 when some process holds the projection's runner lock",
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
        self.delivery_attempts = Counter(
            "ledger_delivery_attempts",
            "Outbound delivery attempts, by message type and outcome (delivered | failed | gone: 410)",
            ["type", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "ledger_delivery_attempt_seconds",
            "Outbound delivery attempt latency (address check, signing, the receiver's answer)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
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
            "POST /v1/orders/{id}/sync calls by outcome (known, recorded, not_found, flex_unavailable, unavailable, "
            "error)",
            ["outcome"],
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

    def delivery_attempt(self, message_type: str, outcome: Outcome, seconds: float) -> None:
        """One outbound attempt (``reactors.delivery``): its outcome by type, and how long it took."""
        label = "delivered" if outcome.delivered else "gone" if outcome.status == 410 else "failed"
        self.delivery_attempts.labels(message_type, label).inc()
        self.delivery_seconds.observe(seconds)

    def flex_call(self, status: int | None, seconds: float) -> None:
        label = str(status) if status is not None else "error"
        self.flex_seconds.labels(label).observe(seconds)
        if status is None or not 200 <= status < 300:
            self.flex_errors.labels(label).inc()

    def render(
        self,
        followers: list[FollowerStatus] | None,
        reconcile: ReconcileStatus | None = None,
        destinations: list[Destination] | None = None,
    ) -> bytes:
        """The exposition; ``followers`` (``reactors.status``), ``reconcile``
        (``reactors.reconcile.reconcile_status``) and ``destinations`` when the database could be read."""
        if destinations is not None:
            self.recorded.destinations = destinations
        if followers is not None:
            self.recorded.followers = followers
        if reconcile is not None:
            self.recorded.reconcile = reconcile
            last = reconcile.last_success_at
            self.reconcile_last_success.set(datetime.fromisoformat(last).timestamp() if last else 0)
            self.reconcile_running.set(1 if reconcile.runner == "running" else 0)
        for row in followers or ():
            self.head.set(row.head)
            self.position.labels(row.name).set(row.position)
            self.lag.labels(row.name).set(row.lag)
            self.running.labels(row.name).set(1 if row.state in ("running", "degraded", "rebuilding") else 0)
            if row.name == "fulfillment":
                for status in ("pending", "failed", "fulfilled"):
                    self.fulfillment.labels(status).set(getattr(row, f"{status}_sessions") or 0)
        return generate_latest(self.registry)
