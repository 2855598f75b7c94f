"""The sync's state as Prometheus metrics, through ``prometheus_client`` (an optional extra:
``pip install "django-athm-sync[metrics]"``).

:class:`AthmSyncCollector` reads :func:`athm_sync.monitoring.snapshot.read` at each scrape:
the runs are other processes, so their numbers come from the database, not from counters in
this one. Every metric is a gauge: ``recent_*`` ones count what the runs started within the
window did (the health verdict's max age), so that history pruned after
``HISTORY_RETENTION`` never makes a number go backwards. No label names a payment; labels
take a handful of values each (a status, an exit code, an endpoint, a kind of failure).

Use it through the ``metrics`` view (:mod:`athm_sync.monitoring.views`), or register it in
your own registry, whose exposition you already serve::

    from prometheus_client import REGISTRY
    from athm_sync.monitoring.metrics import AthmSyncCollector

    REGISTRY.register(AthmSyncCollector())  # describe() reads nothing from the database
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from athm_sync import health
from athm_sync.monitoring import snapshot as monitoring

Samples = Callable[[monitoring.Snapshot], list[tuple[tuple[str, ...], float]]]


@dataclass(frozen=True)
class Gauge:
    """One metric: its name, help, label names, and how to read its samples from a snapshot."""

    name: str
    help: str
    labels: tuple[str, ...]
    samples: Samples


def _one(read: Callable[[monitoring.Snapshot], float]) -> Samples:
    return lambda snap: [((), float(read(snap)))]


def _api(read: Callable[[dict], list[tuple[tuple[str, ...], float]]]) -> Samples:
    """Samples of the window's calls; findPayment, the call every run makes, is always there
    (0 when no run called it), so that ratios and comparisons have something to work on."""

    def samples(snap: monitoring.Snapshot) -> list[tuple[tuple[str, ...], float]]:
        summed = {"findPayment": {"calls": 0, "retries": 0, "failures": {}}, **snap.recent_calls}
        return read(summed)

    return samples


def _failing_since(snap: monitoring.Snapshot) -> float:
    since = snap.health.receivers_failing_since
    return 0.0 if since is None else max(0.0, (snap.now - since).total_seconds())


def _last_success(snap: monitoring.Snapshot) -> float:
    seconds = snap.last_success_seconds
    return math.inf if seconds is None else seconds


GAUGES = (
    Gauge(
        "athm_sync_healthy",
        "1 when manage.py athm_sync --health says healthy (a run succeeded within the window, "
        "the latest run did not fail, and nothing is failing now), else 0.",
        (),
        _one(lambda snap: 1 if snap.health.healthy else 0),
    ),
    Gauge(
        "athm_sync_last_successful_run_age_seconds",
        "Seconds since the last run that exited 0 finished (+Inf when none has).",
        (),
        _one(_last_success),
    ),
    Gauge(
        "athm_sync_due_payments",
        "Payments due for a check now.",
        (),
        _one(lambda snap: snap.due),
    ),
    Gauge(
        "athm_sync_oldest_due_payment_age_seconds",
        "Seconds since the most overdue payment became due for a check (0 when none is due).",
        (),
        _one(lambda snap: snap.oldest_due_seconds),
    ),
    Gauge(
        "athm_sync_active_payments",
        "Payments still followed (OPEN or CONFIRM, not given up), by status.",
        ("status",),
        lambda snap: [((status,), float(n)) for status, n in snap.followed.items()],
    ),
    Gauge(
        "athm_sync_held_payments",
        "Payments held as MISMATCHED (ATH Móvil completed them for another total or "
        "metadata), however long ago: each needs a person.",
        (),
        _one(lambda snap: snap.held),
    ),
    Gauge(
        "athm_sync_given_up_payments",
        "Payments given up still OPEN or CONFIRM after MAX_AGE, no longer checked.",
        (),
        _one(lambda snap: snap.given_up),
    ),
    Gauge(
        "athm_sync_failing_receivers",
        "Signal receivers that raised and are still being retried.",
        (),
        _one(lambda snap: snap.health.receivers_failing),
    ),
    Gauge(
        "athm_sync_oldest_failing_receiver_age_seconds",
        "Seconds since the first failure of the receiver failing longest (0 when none is).",
        (),
        _one(_failing_since),
    ),
    Gauge(
        "athm_sync_given_up_receivers",
        "Signal receivers given up and not delivered since: each needs a person.",
        (),
        _one(lambda snap: snap.receivers_given_up),
    ),
    Gauge(
        "athm_sync_pending_webhooks",
        "Webhook events stored but not verified with ATH Móvil yet.",
        (),
        _one(lambda snap: snap.pending_webhooks),
    ),
    Gauge(
        "athm_sync_unsent_signals",
        "Transitions whose signal is not sent yet (the next run sends them).",
        (),
        _one(lambda snap: snap.unsent_signals),
    ),
    Gauge(
        "athm_sync_window_seconds",
        "The span the athm_sync_recent_* metrics count over (the health verdict's max age).",
        (),
        _one(lambda snap: snap.window.total_seconds()),
    ),
    Gauge(
        "athm_sync_recent_runs",
        "Runs started within the window, by exit code (running: not finished; -1: abandoned).",
        ("exit_code",),
        lambda snap: [((code,), float(n)) for code, n in snap.recent_runs.items()],
    ),
    Gauge(
        "athm_sync_recent_checked_payments",
        "Payments checked by the runs started within the window.",
        (),
        _one(lambda snap: snap.recent_checked),
    ),
    Gauge(
        "athm_sync_recent_transitions",
        "Transitions applied by the runs started within the window, by kind.",
        ("kind",),
        lambda snap: [((kind,), float(n)) for kind, n in snap.recent_transitions.items()],
    ),
    Gauge(
        "athm_sync_recent_held_payments",
        "Payments held within the window, by any door (run, webhook, checkout, admin).",
        (),
        _one(lambda snap: snap.health.held),
    ),
    Gauge(
        "athm_sync_recent_given_up_payments",
        "Payments given up within the window.",
        (),
        _one(lambda snap: snap.health.given_up),
    ),
    Gauge(
        "athm_sync_recent_api_calls",
        "Calls to ATH Móvil by the runs started within the window, by endpoint (retries "
        "not counted).",
        ("call",),
        _api(lambda summed: [((call,), float(e["calls"])) for call, e in summed.items()]),
    ),
    Gauge(
        "athm_sync_recent_api_retries",
        "Attempts beyond the first of the calls to ATH Móvil by the runs started within the "
        "window, by endpoint.",
        ("call",),
        _api(lambda summed: [((call,), float(e["retries"])) for call, e in summed.items()]),
    ),
    Gauge(
        "athm_sync_recent_api_failures",
        "Calls to ATH Móvil by the runs started within the window that failed after their "
        "retries, by endpoint and kind (unreachable, timeout, connection, server_error and "
        "throttled mean ATH Móvil or the way to it is failing).",
        ("call", "kind"),
        _api(
            lambda summed: [
                ((call, kind), float(n))
                for call, entry in summed.items()
                for kind, n in sorted(entry["failures"].items())
            ]
        ),
    ),
)


class AthmSyncCollector(Collector):
    """A ``prometheus_client`` collector of the sync's state, read from the database at each
    scrape (:func:`athm_sync.monitoring.snapshot.read`; ``max_age`` is the health verdict's
    and the ``recent_*`` window)."""

    def __init__(self, max_age: timedelta = health.DEFAULT_MAX_AGE) -> None:
        self.max_age = max_age

    def describe(self) -> Iterator[Metric]:
        """The metrics without their values: registering the collector reads nothing."""
        for gauge in GAUGES:
            yield GaugeMetricFamily(gauge.name, gauge.help, labels=gauge.labels)

    def collect(self) -> Iterator[Metric]:
        """The metrics now; raises ``DatabaseError`` when the database cannot be used."""
        snap = monitoring.read(self.max_age)
        for gauge in GAUGES:
            family = GaugeMetricFamily(gauge.name, gauge.help, labels=gauge.labels)
            for labels, value in gauge.samples(snap):
                family.add_metric(list(labels), value)
            yield family


__all__ = ["GAUGES", "AthmSyncCollector"]
