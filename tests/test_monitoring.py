"""The health endpoint and the Prometheus metrics, as an uptime monitor and Prometheus see them.

The runs are the real command (in this process, or a child process: the metrics must see what
another process did), against the sandbox; the metrics are parsed from the exposition format
with ``prometheus_client``'s own parser; time is driven with time-machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import types
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import responses
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from athm_sync import clock, reconcile, signals
from athm_sync.client import ATHMovilClient
from athm_sync.models import Payment, ReceiverDelivery, SyncRun
from athm_sync.monitoring.metrics import GAUGES, AthmSyncCollector
from athm_sync.runner import Runner, RunOptions
from tests.commands import call, run_process, run_python
from tests.test_overlap import child_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.urls_monitoring")]

HEALTH = "/athm/health/"
METRICS = "/athm/metrics/"
PHONE = "7875550123"
OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scrape(client, path: str = METRICS, **headers: str) -> dict[str, dict[tuple, float]]:
    """GET the metrics; ``{name: {((label, value), ...): value}}`` as Prometheus reads them."""
    response = client.get(path, **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {}
    for family in text_string_to_metric_families(response.content.decode()):
        families[family.name] = {
            tuple(sorted(sample.labels.items())): sample.value for sample in family.samples
        }
    return families


def value(families: dict, name: str, **labels: str) -> float:
    return families[name][tuple(sorted(labels.items()))]


def sync(*args: str) -> int:
    """One run of the real command in this process; its exit code."""
    return call("athm_sync", *args)[0]


def open_payment(sandbox, total: str = "5.00", tracked_total: str | None = None) -> str:
    """A payment the customer opened in ATH Móvil and the shop tracked (for ``tracked_total``
    when given: the shop stored another amount than the customer pays)."""
    ecommerce_id, _ = sandbox.create_payment(total, metadata1="order-7")
    Payment.objects.track(ecommerce_id, total=Decimal(tracked_total or total), metadata_1="order-7")
    return ecommerce_id


ORDER_SERVICE = {"down": True}


def order_service(sender: Any, payment: Payment, **kwargs: Any) -> None:
    """A shop's ``payment_completed`` receiver whose exception quotes the payment's id and
    the customer's phone number, while ``ORDER_SERVICE["down"]``."""
    if ORDER_SERVICE["down"]:
        raise RuntimeError(f"order for {payment.pk} (customer {payment.customer_phone}) refused")


@pytest.fixture
def failing_receiver():
    """``order_service`` connected, and down until the test says otherwise."""
    ORDER_SERVICE["down"] = True
    signals.payment_completed.connect(order_service, weak=False)
    yield ORDER_SERVICE
    signals.payment_completed.disconnect(order_service)
    ORDER_SERVICE["down"] = True


def viewer(client, *codenames: str):
    """``client`` signed in as a staff user with these athm_sync permissions."""
    user = get_user_model().objects.create_user(
        "-".join(["staff", *codenames]), "staff@example.com", "pw", is_staff=True
    )
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="athm_sync", codename__in=codenames)
    )
    client.force_login(user)
    return client


# -- the health endpoint --------------------------------------------------------------------


def test_the_wiring_docs_operations_md_shows_serves_both_views(client, athm_settings, settings):
    """Its urls.py block, run as a shop's own ``urls.py`` (which already has its patterns)."""
    block = OPERATIONS.read_text().split("<!-- monitoring: urls -->\n```python\n", 1)[1]
    urls = types.ModuleType("documented_urls")
    urls.urlpatterns = []
    exec(compile(block.split("```", 1)[0], str(OPERATIONS), "exec"), urls.__dict__)  # noqa: S102
    settings.ROOT_URLCONF = urls

    assert sync() == 0
    assert client.get("/athm/health/").status_code == 200
    assert client.get("/athm/metrics/").status_code == 200


@pytest.mark.urls("tests.urls")
def test_neither_view_is_served_unless_the_shop_routes_it(client, athm_settings):
    """``include("athm_sync.urls")`` alone, as the quick start has it."""
    assert sync() == 0
    for path in (HEALTH, METRICS, "/athm/webhook/health/", "/athm/monitoring/health/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"healthy" not in response.content and b"athm_sync_" not in response.content
    with pytest.raises(NoReverseMatch):
        reverse("athm_sync_monitoring:health")


def test_no_run_yet_is_503_and_a_real_run_makes_it_200(client, athm_settings):
    unhealthy = client.get(HEALTH)
    assert unhealthy.status_code == 503
    assert unhealthy.json()["healthy"] is False and unhealthy.json()["last_success"] is None
    assert unhealthy.json()["problems"] == ["no_recent_success"]

    open_payment(athm_settings)
    assert sync() == 0

    healthy = client.get(reverse("athm_sync_monitoring:health"))
    assert healthy.status_code == 200
    document = healthy.json()
    assert set(document) == {
        "healthy",
        "last_success",
        "last_success_age_seconds",
        "max_age_seconds",
        "given_up",
        "held",
        "receivers_failing",
        "receivers_failing_since",
        "receivers_given_up",
        "receivers_given_up_unacknowledged",
        "payments_failing",
        "latest_run_exit_code",
        "latest_run_finished_at",
        "problems",
        "checked_at",
    }
    run = SyncRun.objects.get()
    assert document["healthy"] is True
    assert document["last_success"] == run.finished_at.isoformat()
    assert 0 <= document["last_success_age_seconds"] < 60
    assert document["max_age_seconds"] == 600
    assert (document["given_up"], document["held"], document["receivers_failing"]) == (0, 0, 0)
    assert document["problems"] == [] and document["latest_run_exit_code"] == 0


def test_a_run_older_than_max_age_is_503_and_the_window_is_the_shops_choice(
    client, athm_settings, time_machine, caplog
):
    assert sync() == 0
    finished = SyncRun.objects.get().finished_at
    time_machine.move_to(finished + timedelta(minutes=11), tick=False)

    with caplog.at_level(logging.INFO, logger="django.request"):
        late = client.get(HEALTH)

    assert late.status_code == 503
    assert caplog.records == []  # an unhealthy sync is not a server error of the shop's
    assert late.json()["last_success_age_seconds"] == 660
    assert client.get(HEALTH, {"max_age": "15m"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # path("healthz", health, {"max_age": "15m"})
    assert client.get("/healthz").json()["max_age_seconds"] == 900
    bad = client.get(HEALTH, {"max_age": "ten minutes"})
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "max_age must be a duration like 90s, 10m, 2h or 1d, not 'ten minutes'"
    }


def test_it_says_what_the_command_says(client, athm_settings, failing_receiver, time_machine):
    """The same verdict as ``manage.py athm_sync --health`` at every step: healthy, a receiver
    failing, healthy again once it is delivered, then no successful run for too long."""

    def both() -> tuple[int, int]:
        return client.get(HEALTH).status_code, call("athm_sync", "--health")[0]

    assert both() == (503, 1)  # no run yet
    assert sync() == 0
    assert both() == (200, 0)

    ecommerce_id = open_payment(athm_settings)
    athm_settings.complete(ecommerce_id)
    assert sync() == 1  # the receiver raised
    assert both() == (503, 1)
    assert client.get(HEALTH).json()["receivers_failing"] == 1

    failing_receiver["down"] = False
    assert sync("--redeliver", "all") == 0
    assert sync() == 0
    assert both() == (200, 0)

    time_machine.move_to(clock.now() + timedelta(minutes=20), tick=False)
    assert both() == (503, 1)


def test_it_reveals_no_payment_phone_token_or_error_text(
    client, athm_settings, failing_receiver, settings
):
    """A receiver's exception quotes the payment's id and the customer's phone: the run's
    errors hold them, the health endpoint and the metrics do not. A user who may view the run
    history in the admin also gets the reason line."""
    ecommerce_id = open_payment(athm_settings)
    athm_settings.complete(ecommerce_id, phone=PHONE)
    assert sync() == 1
    errors = json.dumps(SyncRun.objects.get().errors)
    assert ecommerce_id in errors and PHONE in errors
    secrets = [
        ecommerce_id,
        PHONE,
        "refused",
        settings.ATHM_SYNC["PUBLIC_TOKEN"],
        settings.ATHM_SYNC["PRIVATE_TOKEN"],
        settings.ATHM_SYNC["WEBHOOK_SECRET"],
    ]

    for path in (HEALTH, METRICS):
        text = client.get(path).content.decode()
        assert not [secret for secret in secrets if secret in text], path
        assert not UUID_TEXT.search(text), path
    assert "reason" not in client.get(HEALTH).json()

    assert "reason" not in viewer(client, "view_payment").get(HEALTH).json()
    staff = viewer(client, "view_syncrun")
    assert "1 signal receiver(s) failing" in staff.get(HEALTH).json()["reason"]


def test_head_answers_like_get_without_a_body_and_nothing_is_cached(client, athm_settings):
    assert sync() == 0
    for path, content_type in ((HEALTH, "application/json"), (METRICS, "text/plain")):
        get, head = client.get(path), client.head(path)
        assert (get.status_code, head.status_code) == (200, 200), path
        assert head.content == b"" and head["Content-Type"].startswith(content_type)
        assert "no-store" in get["Cache-Control"] and "no-store" in head["Cache-Control"]
        assert client.post(path).status_code == 405
    assert client.head("/healthz").status_code == 200


def test_health_costs_a_few_indexed_queries_however_much_is_stored(
    client, athm_settings, django_assert_max_num_queries
):
    """Five queries when healthy, seven at most when not (``--health``'s own), with one run or
    300, and many payments."""
    assert sync() == 0
    with django_assert_max_num_queries(5):
        assert client.get(HEALTH).status_code == 200
    SyncRun.objects.bulk_create(
        [SyncRun(finished_at=clock.now(), exit_code=1, errors=[]) for _ in range(300)]
    )
    Payment.objects.bulk_create(
        [Payment(ecommerce_id=uuid.uuid4(), total=Decimal("5")) for _ in range(300)]
    )
    SyncRun.objects.filter(exit_code=0).update(finished_at=clock.now() - timedelta(hours=1))
    with django_assert_max_num_queries(7):
        assert client.get(HEALTH).status_code == 503


def test_a_database_that_cannot_be_used_is_503_in_one_line():
    """The default SQLite file of tests/settings.py is never migrated, as a new project's; a
    real process asks the endpoints and logs what happened in one line."""
    script = """
import django
from django.conf import settings
django.setup()
from django.test import Client
from django.test.utils import override_settings
with override_settings(ROOT_URLCONF="tests.urls_monitoring", ALLOWED_HOSTS=["*"]):
    for path in ("/athm/health/", "/athm/metrics/"):
        answer = Client().get(path)
        print(answer.status_code, answer.content.decode().strip())
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env.pop("ATHM_TEST_SQLITE", None)
    if "DATABASE_URL" in env:  # a database that does not exist
        env["DATABASE_URL"] = env["DATABASE_URL"].rsplit("/", 1)[0] + "/athm_sync_no_such_db"
    result = run_python(script, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '503 {"healthy": false, "error": "the database cannot be used"}',
        "503 the database cannot be used",
    ]
    assert "Traceback" not in result.stderr
    logged = [line for line in result.stderr.splitlines() if line]
    assert len(logged) == 2
    assert all(
        line.startswith("Monitoring answers 503: the database cannot be used: ") for line in logged
    )


# -- the metrics ----------------------------------------------------------------------------


def test_metrics_after_real_runs_say_what_is_due_held_and_done(client, athm_settings, time_machine):
    sandbox = athm_settings
    completed = open_payment(sandbox)
    held = open_payment(sandbox, total="10.00", tracked_total="12.00")
    open_payment(sandbox)
    first_due = Payment.objects.order_by("next_check_at").first().next_check_at
    time_machine.move_to(first_due + timedelta(seconds=90), tick=False)

    before = scrape(client)

    assert value(before, "athm_sync_due_payments") == 3
    assert value(before, "athm_sync_oldest_due_payment_age_seconds") == 90
    assert value(before, "athm_sync_active_payments", status="OPEN") == 3
    assert value(before, "athm_sync_healthy") == 0
    assert value(before, "athm_sync_last_successful_run_age_seconds") == float("inf")
    assert value(before, "athm_sync_recent_runs", exit_code="0") == 0

    sandbox.complete(completed)
    sandbox.complete(held)
    assert sync() == 0
    time_machine.move_to(clock.now() + timedelta(seconds=2), tick=False)

    after = scrape(client)

    assert value(after, "athm_sync_due_payments") == 0  # the open one is checked again later
    assert value(after, "athm_sync_active_payments", status="OPEN") == 1
    assert value(after, "athm_sync_held_payments") == 1
    assert value(after, "athm_sync_recent_held_payments") == 1
    assert value(after, "athm_sync_recent_transitions", kind="completed") == 1
    assert value(after, "athm_sync_recent_transitions", kind="mismatched") == 1
    assert value(after, "athm_sync_recent_checked_payments") == 3
    assert value(after, "athm_sync_recent_runs", exit_code="0") == 1
    assert value(after, "athm_sync_recent_runs", exit_code="1") == 0
    assert value(after, "athm_sync_recent_api_calls", call="findPayment") == 3
    assert value(after, "athm_sync_healthy") == 1
    assert value(after, "athm_sync_last_successful_run_age_seconds") == pytest.approx(2, abs=1)
    assert value(after, "athm_sync_window_seconds") == 600
    assert after["athm_sync_recent_api_failures"] == {}
    assert SyncRun.objects.get().calls["findPayment"] == {"calls": 3, "retries": 0, "failures": {}}


def test_a_run_in_another_process_is_seen_by_the_scrape(client, athm_settings, tmp_path):
    """Runs are separate processes (cron): what the scrape says comes from the database."""
    athm_settings.inject_fault("http503", "findPayment", times=100)
    open_payment(athm_settings)
    open_payment(athm_settings)

    child = run_process("athm_sync", env=child_env(athm_settings, tmp_path / "signals.log"))

    assert child.returncode == 1, child.stderr
    families = scrape(client)
    assert value(families, "athm_sync_recent_runs", exit_code="1") == 1
    assert value(families, "athm_sync_recent_api_calls", call="findPayment") == 2
    failures = value(
        families, "athm_sync_recent_api_failures", call="findPayment", kind="server_error"
    )
    assert failures == 2
    # MAX_ATTEMPTS is 3 in tests/settings.py: two retries of each call.
    assert value(families, "athm_sync_recent_api_retries", call="findPayment") == 4
    assert value(families, "athm_sync_healthy") == 0


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("http503", "server_error"),
        ("btra9998", "server_error"),
        ("http429", "throttled"),
        ("drop", "connection"),
        ("garbage", "invalid_answer"),
    ],
)
def test_failures_are_counted_by_kind_after_a_sandbox_fault(client, athm_settings, fault, kind):
    athm_settings.inject_fault(fault, "findPayment", times=100)
    open_payment(athm_settings)

    assert sync() == 1

    families = scrape(client)
    assert families["athm_sync_recent_api_failures"] == {
        (("call", "findPayment"), ("kind", kind)): 1
    }
    assert value(families, "athm_sync_recent_api_calls", call="findPayment") == 1
    assert value(families, "athm_sync_recent_runs", exit_code="1") == 1


def test_an_answer_that_never_comes_is_a_timeout(client, athm_settings, settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "READ_TIMEOUT": 0.5, "MAX_ATTEMPTS": 1}
    athm_settings.inject_fault("timeout", "findPayment", times=100, delay=1.5)
    open_payment(athm_settings)

    assert sync() == 1

    families = scrape(client)
    assert families["athm_sync_recent_api_failures"] == {
        (("call", "findPayment"), ("kind", "timeout")): 1
    }


def test_an_unreachable_ath_movil_is_counted_as_unreachable(client, athm_settings, settings):
    open_payment(athm_settings)
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "API_BASE_URL": "http://127.0.0.1:9"}

    assert sync() == 1

    families = scrape(client)
    assert families["athm_sync_recent_api_failures"] == {
        (("call", "findPayment"), ("kind", "unreachable")): 1
    }


def test_rejected_credentials_are_counted_and_the_run_exits_2(client, athm_settings):
    athm_settings.inject_fault("auth", "findPayment", times=100)
    open_payment(athm_settings)

    assert sync() == 2

    families = scrape(client)
    assert value(families, "athm_sync_recent_runs", exit_code="2") == 1
    assert families["athm_sync_recent_api_failures"] == {
        (("call", "findPayment"), ("kind", "credentials")): 1
    }


def test_an_answer_about_another_payment_is_one_invalid_answer():
    """check_answer refuses it after the client accepted it: counted once, as invalid."""
    asked, other = uuid.uuid4(), uuid.uuid4()
    client = ATHMovilClient("public-token", api_base_url="https://athm.invalid")
    with responses.RequestsMock() as mocked:
        mocked.post(
            "https://athm.invalid/api/business-transaction/ecommerce/business/findPayment",
            json={
                "status": "success",
                "data": {"ecommerceId": str(other), "total": "5.00", "ecommerceStatus": "OPEN"},
            },
        )
        observation = reconcile.observe(client, asked)

    assert observation.error is not None
    assert client.calls.snapshot() == {
        "findPayment": {"calls": 1, "retries": 0, "failures": {"invalid_answer": 1}}
    }


def test_each_run_records_only_its_own_calls_when_a_client_serves_several(athm_settings):
    """``--watch`` keeps one client for every pass."""
    open_payment(athm_settings)
    open_payment(athm_settings)
    with ATHMovilClient.from_settings() as shared:
        Runner(RunOptions(), client=shared).run()
        Payment.objects.update(next_check_at=clock.now())
        Payment.objects.filter(pk=Payment.objects.first().pk).update(
            next_check_at=clock.now() + timedelta(hours=1)
        )
        Runner(RunOptions(), client=shared).run()

    first, second = SyncRun.objects.order_by("started_at")
    assert first.calls["findPayment"]["calls"] == 2
    assert second.calls["findPayment"]["calls"] == 1


def test_failing_and_given_up_receivers_and_unsent_signals(client, athm_settings, failing_receiver):
    ecommerce_id = open_payment(athm_settings)
    athm_settings.complete(ecommerce_id)
    assert sync() == 1

    failing = scrape(client)
    assert value(failing, "athm_sync_failing_receivers") == 1
    assert value(failing, "athm_sync_oldest_failing_receiver_age_seconds") >= 0
    assert value(failing, "athm_sync_given_up_receivers") == 0
    assert value(failing, "athm_sync_healthy") == 0

    ReceiverDelivery.objects.update(given_up_at=clock.now())
    given_up = scrape(client)
    assert value(given_up, "athm_sync_failing_receivers") == 0
    assert value(given_up, "athm_sync_given_up_receivers") == 1
    assert value(given_up, "athm_sync_unsent_signals") == 0


def test_pending_webhooks_and_given_up_payments(client, athm_settings):
    ecommerce_id = open_payment(athm_settings)
    athm_settings.complete(ecommerce_id)
    athm_settings.inject_fault("http503", "findPayment", times=100)
    body = athm_settings.webhook_payload(ecommerce_id)
    url = reverse("athm_sync:webhook", kwargs={"token": "w" * 40})
    assert client.post(url, json.dumps(body), content_type="application/json").status_code == 200
    Payment.objects.create(ecommerce_id=uuid.uuid4(), total=Decimal("5"), given_up_at=clock.now())

    families = scrape(client)

    assert value(families, "athm_sync_pending_webhooks") == 1
    assert value(families, "athm_sync_given_up_payments") == 1
    assert value(families, "athm_sync_recent_given_up_payments") == 1


def test_every_metric_is_a_documented_gauge_without_per_payment_labels(client, athm_settings):
    open_payment(athm_settings)
    assert sync() == 0
    response = client.get(METRICS)
    families = list(text_string_to_metric_families(response.content.decode()))

    assert {family.name for family in families} == {gauge.name for gauge in GAUGES}
    assert {family.type for family in families} == {"gauge"}
    allowed = {"status", "exit_code", "kind", "call"}
    for family in families:
        assert family.documentation, family.name
        for sample in family.samples:
            assert set(sample.labels) <= allowed, family.name
            assert not any(UUID_TEXT.search(v) for v in sample.labels.values()), family.name
    documented = OPERATIONS.read_text()
    assert [gauge.name for gauge in GAUGES if f"| `{gauge.name}` |" not in documented] == []


def test_metrics_cost_the_same_few_queries_however_much_is_stored(
    client, athm_settings, django_assert_max_num_queries
):
    assert sync() == 0
    with CaptureQueriesContext(connection) as few:
        scrape(client)
    SyncRun.objects.bulk_create(
        [
            SyncRun(
                finished_at=clock.now(),
                exit_code=0,
                checked=1,
                calls={"findPayment": {"calls": 1, "retries": 0, "failures": {"timeout": 1}}},
            )
            for _ in range(300)
        ]
    )
    Payment.objects.bulk_create(
        [Payment(ecommerce_id=uuid.uuid4(), total=Decimal("5")) for _ in range(300)]
    )
    with django_assert_max_num_queries(len(few.captured_queries)):
        families = scrape(client)
    assert len(few.captured_queries) <= 13
    assert value(families, "athm_sync_due_payments") == 300
    assert value(families, "athm_sync_recent_runs", exit_code="0") == 301
    assert (
        value(families, "athm_sync_recent_api_failures", call="findPayment", kind="timeout") == 300
    )


def test_openmetrics_when_the_scraper_asks_for_it(client, athm_settings):
    response = client.get(METRICS, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().endswith("# EOF\n")


def test_the_collector_in_a_shops_own_registry_reads_nothing_until_scraped(
    athm_settings, django_assert_num_queries
):
    registry = CollectorRegistry()
    with django_assert_num_queries(0):
        registry.register(AthmSyncCollector())
    assert sync() == 0
    text = generate_latest(registry).decode()
    assert "athm_sync_healthy 1.0" in text


def test_without_prometheus_client_the_app_works_and_the_view_says_what_to_install():
    """A shop that did not install the extra: the app imports and checks, the health endpoint
    is there, and the metrics view answers 503 naming the extra."""
    script = """
import builtins, sys
real_import = builtins.__import__
def without_prometheus(name, *args, **kwargs):
    if name == "prometheus_client" or name.startswith("prometheus_client."):
        raise ImportError("No module named 'prometheus_client'")
    return real_import(name, *args, **kwargs)
builtins.__import__ = without_prometheus
import django
django.setup()
from django.core.management import call_command
call_command("check", "athm_sync")
import athm_sync.monitoring.urls, athm_sync.monitoring.snapshot
from django.test import RequestFactory
from athm_sync.monitoring import views
answer = views.metrics(RequestFactory().get("/athm/metrics/"))
print(answer.status_code, answer.content.decode().strip())
"""
    result = run_python(script, {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"})

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        '503 prometheus_client is not installed: pip install "django-athm-sync[metrics]"'
    )
    assert "Traceback" not in result.stderr
