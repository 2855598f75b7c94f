"""The sandbox's ``expire`` is an expiry in the shop, the way the shop sees it: its own deadline.

ATH Móvil's findPayment says CANCEL for a cancelled and an expired payment alike, and the app
calls a CANCEL before its own ``created_at + timeout`` a cancellation. So the sandbox's expire
(in process, over its control API, and ``manage.py athm_sandbox expire`` for a sandbox in
another process) must move the shop's deadline too; these tests drive each door end to end:
the sandbox on loopback, its ``expired`` webhook to the shop's live view, the real command.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from django.urls import reverse

from athm_sync import clock
from athm_sync.client import ATHMovilClient
from athm_sync.models import Payment
from athm_sync.sandbox import ListenerFailed, SandboxServer
from athm_sync.sandbox.formats import PR_TZ
from tests import commands
from tests.test_overlap import child_env

S = Payment.Status
SECRET = "w" * 40  # tests/settings.py


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def signal_lines(log: Path) -> list[str]:
    """``kind ecommerce_id`` of each signal a child process sent."""
    if not log.exists():
        return []
    return [" ".join(line.split()[:2]) for line in log.read_text().splitlines()]


def track(sandbox: SandboxServer, total: str = "8.00") -> Payment:
    """A payment the button made in the browser, registered by the shop a moment later."""
    ecommerce_id, auth_token = sandbox.create_payment(total, timeout=600)
    return Payment.objects.track(ecommerce_id, total=total, auth_token=auth_token)


@pytest.fixture
def subscribed(athm_settings, live_server):
    """The sandbox posting its webhooks to the shop's view on a live server as they happen."""
    listener = live_server.url + reverse("athm_sync:webhook", kwargs={"token": SECRET})
    with ATHMovilClient.from_settings() as client:
        client.subscribe_webhooks(listener)
    athm_settings.state.auto_webhooks = True
    return athm_settings


@pytest.fixture
def standalone_sandbox(settings):
    """A sandbox the shop is pointed at but not connected to, as one in another process is:
    its expire cannot move the shop's deadline by itself."""
    server = SandboxServer(port=0).start()
    settings.ATHM_SYNC = {
        **settings.ATHM_SYNC,
        "API_BASE_URL": server.url,
        "REPORT_BASE_URL": server.url,
    }
    try:
        yield server
    finally:
        server.stop()


# -- the sandbox alone -----------------------------------------------------------------------


@pytest.mark.parametrize("door", ["in process", "control API"])
def test_expire_ages_the_payment_as_if_its_whole_timeout_had_passed(sandbox, door):
    ecommerce_id, _ = sandbox.create_payment("8.00", timeout=600)
    created = when(sandbox.payment(ecommerce_id)["createdAt"])
    if door == "in process":
        seen = sandbox.expire(ecommerce_id)
    else:
        answer = requests.post(f"{sandbox.url}/sandbox/payments/{ecommerce_id}/expire", timeout=10)
        assert answer.status_code == 200
        seen = answer.json()

    assert (seen["status"], seen["cancelReason"]) == ("CANCEL", "expired")
    deadline, moved_back = when(seen["deadline"]), when(seen["createdAt"])
    assert deadline <= sandbox.now()  # its time ran out now, not ten minutes from now
    assert abs((deadline - moved_back) - timedelta(seconds=600)) < timedelta(milliseconds=1)
    assert created - moved_back > timedelta(seconds=590)
    assert sandbox.state.payment_data(ecommerce_id)["ecommerceStatus"] == "CANCEL"
    webhook = sandbox.webhook_payload(ecommerce_id)
    dated = datetime.strptime(webhook["date"], "%Y-%m-%d %H:%M:%S.0").replace(tzinfo=PR_TZ)
    assert webhook["status"] == "expired"
    assert abs(dated - deadline) < timedelta(seconds=5)  # dated when its time ran out


def test_a_listener_that_raises_leaves_the_payment_open(sandbox):
    ecommerce_id, _ = sandbox.create_payment("8.00")

    def broken(ecommerce_id: str) -> None:
        raise RuntimeError("the shop's database is down")

    sandbox.state.add_expiry_listener(broken)
    try:
        with pytest.raises(ListenerFailed, match="the shop's database is down"):
            sandbox.expire(ecommerce_id)
        answer = requests.post(f"{sandbox.url}/sandbox/payments/{ecommerce_id}/expire", timeout=10)
    finally:
        sandbox.state.remove_expiry_listener(broken)

    assert answer.status_code == 500 and "was not expired" in answer.json()["error"]
    assert sandbox.payment(ecommerce_id)["status"] == "OPEN"
    assert sandbox.expire(ecommerce_id)["status"] == "CANCEL"  # removed: expire works again


# -- a shop in the sandbox's process (the test plugin, scripts/demo) -------------------------


@pytest.mark.django_db(transaction=True)
def test_expire_in_process_posts_an_expired_webhook_the_shop_applies_as_an_expiry(
    subscribed, received, tmp_path
):
    sandbox = subscribed
    payment = Payment.objects.create_via_api(total=Decimal("8.00"), metadata_1="order-3")

    sandbox.expire(str(payment.pk))  # before it returns, ATH Móvil's webhook was posted

    delivery = sandbox.state.deliveries[-1]
    assert delivery["payload"]["status"] == "expired" and delivery["status"] == 200
    payment.refresh_from_db()
    assert payment.status == S.EXPIRED
    assert [name for name, _, _ in received] == ["payment_expired"]
    assert payment.deadline <= clock.now()
    # The scheduled run agrees, and sends nothing twice.
    log = tmp_path / "signals.log"
    result = commands.run_process("athm_sync", "--json", env=child_env(sandbox, log))
    assert result.returncode == 0, result.stderr
    assert signal_lines(log) == []


@pytest.mark.django_db(transaction=True)
def test_the_expire_control_over_http_then_the_scheduled_run_sends_payment_expired(
    athm_settings, tmp_path
):
    sandbox = athm_settings
    payment = track(sandbox)
    assert payment.deadline - clock.now() > timedelta(seconds=590)

    # As a person does with curl: the sandbox's own server thread moves the shop's deadline.
    answer = requests.post(f"{sandbox.url}/sandbox/payments/{payment.pk}/expire", timeout=10)
    assert answer.status_code == 200 and answer.json()["cancelReason"] == "expired"

    log = tmp_path / "signals.log"
    result = commands.run_process("athm_sync", "-v", "2", env=child_env(sandbox, log))
    assert result.returncode == 0, result.stderr
    assert signal_lines(log) == [f"payment_expired {payment.pk}"]
    assert Payment.objects.get(pk=payment.pk).status == S.EXPIRED


@pytest.mark.django_db(transaction=True)
def test_a_cancel_is_still_a_cancellation(athm_settings, received):
    # Only expire moves the deadline: a customer's cancel before it stays a cancellation.
    import athm_sync

    payment = track(athm_settings)
    athm_settings.cancel(str(payment.pk))
    assert athm_sync.sync_payment(payment.pk).payment.status == S.CANCEL
    assert [name for name, _, _ in received] == ["payment_cancelled"]


def test_a_test_without_the_database_expires_in_the_sandbox_alone(athm_settings):
    # No database, no stored payment to move: expire must not trip over the database block.
    ecommerce_id, _ = athm_settings.create_payment("8.00")
    assert athm_settings.expire(ecommerce_id)["cancelReason"] == "expired"


# -- a sandbox in another process: manage.py athm_sandbox expire ------------------------------


@pytest.mark.django_db(transaction=True)
def test_athm_sandbox_expire_ages_the_shop_then_the_sandbox_and_checks(
    standalone_sandbox, tmp_path
):
    payment = track(standalone_sandbox)
    log = tmp_path / "signals.log"

    result = commands.run_process(
        "athm_sandbox", "expire", str(payment.pk), env=child_env(standalone_sandbox, log)
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"athm_sandbox: payment {payment.pk} expired: EXPIRED, payment_expired sent"
    )
    assert result.stderr == ""
    assert signal_lines(log) == [f"payment_expired {payment.pk}"]
    stored = Payment.objects.get(pk=payment.pk)
    assert stored.status == S.EXPIRED
    assert stored.created_at < payment.created_at - timedelta(seconds=590)
    seen = standalone_sandbox.payment(str(payment.pk))
    assert (seen["status"], seen["cancelReason"]) == ("CANCEL", "expired")


@pytest.mark.django_db(transaction=True)
def test_athm_sandbox_expire_with_the_sandboxs_webhook_arriving_first(
    standalone_sandbox, live_server, received, tmp_path
):
    listener = live_server.url + reverse("athm_sync:webhook", kwargs={"token": SECRET})
    with ATHMovilClient.from_settings() as client:
        client.subscribe_webhooks(listener)
    standalone_sandbox.state.auto_webhooks = True
    payment = track(standalone_sandbox)

    result = commands.run_process(
        "athm_sandbox",
        "expire",
        str(payment.pk),
        env=child_env(standalone_sandbox, tmp_path / "signals.log"),
    )

    assert result.returncode == 0, result.stderr
    # The shop's deadline had passed before the sandbox posted its webhook: an expiry.
    assert standalone_sandbox.state.deliveries[-1]["payload"]["status"] == "expired"
    assert [name for name, _, _ in received] == ["payment_expired"]
    assert "(the sandbox's expired webhook was here first)" in result.stdout
    assert signal_lines(tmp_path / "signals.log") == []


@pytest.mark.django_db(transaction=True)
def test_athm_sandbox_expire_says_in_a_line_each_payment_it_cannot_expire(
    standalone_sandbox, tmp_path
):
    sandbox = standalone_sandbox
    paid, good = track(sandbox), track(sandbox)
    sandbox.complete(str(paid.pk))
    unknown = "00000000-0000-4000-8000-000000000000"
    before = Payment.objects.get(pk=paid.pk)

    result = commands.run_process(
        "athm_sandbox",
        "expire",
        str(paid.pk),
        unknown,
        "not-an-id",
        str(good.pk),
        env=child_env(sandbox, tmp_path / "signals.log"),
    )

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"athm_sandbox: error: payment {paid.pk} is COMPLETED in the sandbox: only an OPEN or "
        "CONFIRM payment can expire",
        f"athm_sandbox: error: payment {unknown} is not stored in this shop: track it first, "
        f"or expire it in the sandbox alone (POST {sandbox.url}/sandbox/payments/{unknown}/"
        "expire)",
        "athm_sandbox: error: ecommerce_id must be a UUID, got 'not-an-id'",
    ]
    assert "Traceback" not in result.stderr
    assert result.stdout.strip().endswith(f"{good.pk} expired: EXPIRED, payment_expired sent")
    after = Payment.objects.get(pk=paid.pk)  # left as it was
    assert (after.status, after.created_at, after.expires_at) == (
        S.OPEN,
        before.created_at,
        before.expires_at,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("api_base_url", "message"),
    [
        (
            "https://payments.athmovil.com",
            "athm_sandbox: error: ATHM_SYNC['API_BASE_URL'] is https://payments.athmovil.com, "
            "not a sandbox on this machine: payments are expired only in the sandbox "
            "(127.0.0.1, localhost or ::1)",
        ),
        (
            "http://127.0.0.1:9",
            "athm_sandbox: error: the sandbox at http://127.0.0.1:9 cannot be reached "
            "(ConnectionError); start it with python -m athm_sync.sandbox, or point "
            "ATHM_SYNC['API_BASE_URL'] at it",
        ),
    ],
)
def test_athm_sandbox_expire_refuses_without_a_sandbox_in_one_line(
    standalone_sandbox, tmp_path, api_base_url, message
):
    payment = track(standalone_sandbox)
    env = child_env(standalone_sandbox, tmp_path / "signals.log")
    env["ATHM_TEST_API_BASE_URL"] = api_base_url

    result = commands.run_process("athm_sandbox", "expire", str(payment.pk), env=env)

    assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n")
    stored = Payment.objects.get(pk=payment.pk)
    assert (stored.created_at, stored.expires_at) == (payment.created_at, payment.expires_at)


@pytest.mark.django_db(transaction=True)
def test_a_payment_the_sandbox_does_not_expire_is_put_back(standalone_sandbox):
    from athm_sync.sandbox_expiry import ExpiryRefused, expire

    payment = track(standalone_sandbox)

    def refuse(ecommerce_id: str) -> None:
        raise RuntimeError("not now")

    standalone_sandbox.state.add_expiry_listener(refuse)
    with pytest.raises(ExpiryRefused, match=r"was not expired: .* raised RuntimeError: not now"):
        expire(payment.pk)

    stored = Payment.objects.get(pk=payment.pk)
    assert (stored.status, stored.created_at, stored.expires_at) == (
        S.OPEN,
        payment.created_at,
        payment.expires_at,
    )


def test_the_deadline_moves_by_what_was_left_and_never_forward(db, athm_settings):
    from athm_sync.sandbox_expiry import age

    payment = track(athm_settings)
    now = payment.created_at + timedelta(seconds=100)
    aged = age(payment.pk, now=now)
    stored = Payment.objects.get(pk=payment.pk)
    assert aged.moved_by == timedelta(seconds=500)
    assert stored.expires_at == now and stored.created_at == payment.created_at - aged.moved_by
    assert stored.next_check_at <= now
    later = age(payment.pk, now=now + timedelta(seconds=30))  # already past: unchanged
    assert later.moved_by == timedelta(0)
    assert Payment.objects.get(pk=payment.pk).expires_at == now
