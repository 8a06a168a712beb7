"""Every Prometheus metric, named once. Labels never carry user ids, org names or raw paths."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    """One set of metrics on its own registry (tests and several apps per process stay apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reservations = Counter(
            "budgetd_reservations_total", "Granted reservations", ["result"], registry=self.registry
        )
        self.denials = Counter(
            "budgetd_denials_total",
            "Denied scopes, by limit kind and scope",
            ["kind", "scope"],
            registry=self.registry,
        )
        self.commits = Counter(
            "budgetd_commits_total", "Settled commits", ["overrun"], registry=self.registry
        )
        self.spend = Counter(
            "budgetd_spend_micros_total", "Spend recorded, micro-dollars", registry=self.registry
        )
        self.store_failures = Counter(
            "budgetd_store_unavailable_total",
            "Requests that met an unreachable store, by what was decided",
            ["decision"],
            registry=self.registry,
        )
        self.policy_load_errors = Counter(
            "budgetd_config_load_error_total", "Policy reloads that failed", registry=self.registry
        )
        self.store_up = Gauge(
            "budgetd_store_up",
            "1 when the store answered the last readiness check",
            registry=self.registry,
        )
        self.policy_loaded = Gauge(
            "budgetd_policy_loaded", "1 when a valid policy is active", registry=self.registry
        )
        self.events_read = Counter(
            "budgetd_events_emitted_total",
            "Events read from the org streams for delivery",
            registry=self.registry,
        )
        self.events_delivered = Counter(
            "budgetd_events_delivered_total",
            "Event deliveries, by channel kind",
            ["channel_kind"],
            registry=self.registry,
        )
        self.events_retried = Counter(
            "budgetd_events_retried_total",
            "Failed deliveries scheduled for a retry",
            registry=self.registry,
        )
        self.ledger_trimmed = Counter(
            "budgetd_ledger_trimmed_total",
            "Ledger entries exported and trimmed by the retention job",
            registry=self.registry,
        )
        self.events_dead = Counter(
            "budgetd_events_dead_lettered_total",
            "Deliveries given up after the last attempt",
            registry=self.registry,
        )
        self.sweep_lag = Gauge(
            "budgetd_sweep_lag_seconds",
            "Seconds between a sweep's scheduled and actual start",
            registry=self.registry,
        )
        self.expired_holds = Counter(
            "budgetd_expired_holds_total", "Holds reclaimed by the sweep", registry=self.registry
        )
