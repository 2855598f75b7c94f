"""The client against the real sandbox server: the whole lifecycle, and injected faults."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest

from athm_sync.client import (
    ATHMovilClient,
    AuthenticationError,
    AuthTokenError,
    InvalidResponseError,
    InvalidStateError,
    NotFoundError,
    TransientError,
)

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sandbox, sleeps):
    with ATHMovilClient(
        "sandbox-public-token",
        "sandbox-private-token",
        api_base_url=sandbox.url,
        report_base_url=sandbox.url,
        connect_timeout=1,
        read_timeout=1,
        max_attempts=3,
        retry_deadline=10,
        pool_size=8,
        sleep=sleeps.append,
    ) as client:
        yield client


def test_a_payment_from_creation_to_partial_refunds(client, sandbox):
    created = client.create_payment(total=Decimal("10.00"), metadata_1="order-1", timeout=300)
    assert client.find_payment(created.ecommerce_id).status == "OPEN"

    sandbox.confirm(str(created.ecommerce_id), name=" Ana Ruiz", phone="(787) 555-1234")
    confirmed = client.find_payment(created.ecommerce_id)
    assert confirmed.status == "CONFIRM"
    assert confirmed.reference_number == "" and confirmed.transaction_date is None

    completed = client.authorize(created.auth_token)
    assert completed.status == "COMPLETED"
    assert completed.fee == Decimal("0.35") and completed.net_amount == Decimal("9.65")
    assert completed.reference_number and completed.transaction_date is not None
    assert completed.customer_name == "Ana Ruiz" and completed.customer_phone == "7875551234"
    assert completed.metadata_1 == "order-1"

    first = client.refund(completed.reference_number, Decimal("2.50"), "one item")
    second = client.refund(completed.reference_number, "1.00", ecommerce_id=created.ecommerce_id)
    # ATH Móvil gives refunds the payment's reference number: not a unique key.
    assert first.reference_number == second.reference_number == completed.reference_number
    # The answer describes the payment without its ecommerceId: known only when passed in.
    assert first.payment is None
    assert second.payment.ecommerce_id == created.ecommerce_id
    assert second.payment.total_refunded_amount == Decimal("3.50")
    assert second.payment.daily_transaction_id == completed.daily_transaction_id
    assert second.payment.transaction_date == completed.transaction_date
    assert first.message == "one item" and first.daily_transaction_id
    assert first.transaction_date is not None
    assert client.find_payment(created.ecommerce_id).total_refunded_amount == Decimal("3.50")

    report = client.transaction_report(
        sandbox.now() - timedelta(hours=1), sandbox.now() + timedelta(seconds=1)
    )
    kinds = sorted((row.transaction_type, row.total) for row in report)
    assert kinds == [
        ("ECOMMERCE", Decimal("10.00")),
        ("REFUND", Decimal("1.00")),
        ("REFUND", Decimal("2.50")),
    ]


def test_expiry_and_cancel_both_read_as_cancel(client, sandbox):
    short = client.create_payment(total=Decimal("5.00"), timeout=120)
    long = client.create_payment(total=Decimal("5.00"), timeout=600)
    cancelled = client.create_payment(total=Decimal("5.00"))
    assert client.cancel(cancelled.ecommerce_id).status == "CANCEL"
    sandbox.advance(121)
    assert client.find_payment(short.ecommerce_id).status == "CANCEL"
    assert client.find_payment(long.ecommerce_id).status == "OPEN"
    assert client.find_payment(cancelled.ecommerce_id).status == "CANCEL"
    with pytest.raises(InvalidStateError) as caught:
        client.authorize(short.auth_token)
    assert caught.value.errorcode == "BTRA_0039"


def test_capture_needs_a_confirmed_payment_and_a_live_token(client, sandbox):
    created = client.create_payment(total=Decimal("5.00"))
    with pytest.raises(InvalidStateError) as caught:
        client.authorize(created.auth_token)
    assert caught.value.errorcode == "BTRA_0032"
    with pytest.raises(AuthTokenError):
        client.authorize("not-a-jwt")
    sandbox.confirm(str(created.ecommerce_id))
    sandbox.advance(16 * 60)  # the auth token lives 15 minutes
    with pytest.raises(AuthTokenError) as caught:
        client.authorize(created.auth_token)
    assert caught.value.errorcode == "token.expired"


def test_update_phone_number(client, sandbox):
    created = client.create_payment(total=Decimal("5.00"))
    client.update_phone_number(created.ecommerce_id, "(787) 555-9876", created.auth_token)
    assert "7875559876" in str(sandbox.payment(str(created.ecommerce_id)))


def test_an_unknown_payment_is_not_found(client, sandbox):
    with pytest.raises(NotFoundError) as caught:
        client.find_payment(UNKNOWN_ID)
    assert caught.value.errorcode == "BTRA_0031"
    assert sandbox.counts()["findPayment"] == 1


def test_wrong_credentials_are_an_authentication_error_and_not_retried(sandbox, sleeps):
    client = ATHMovilClient("wrong", api_base_url=sandbox.url, sleep=sleeps.append)
    with pytest.raises(AuthenticationError):
        client.find_payment(UNKNOWN_ID)
    assert sandbox.counts()["findPayment"] == 1 and sleeps == []


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("http500", {}),
        ("http503", {}),
        ("http429", {}),
        ("btra9998", {}),
        ("btra9999", {}),
        ("drop", {}),
        ("html", {}),
        ("timeout", {"delay": 1.5}),  # longer than the client's 1 s read timeout
    ],
)
def test_find_payment_rides_out_transient_faults(client, sandbox, sleeps, kind, options):
    created = client.create_payment(total=Decimal("5.00"))
    sandbox.inject_fault(kind, "findPayment", times=2, **options)
    assert client.find_payment(created.ecommerce_id).status == "OPEN"
    assert sandbox.counts()["findPayment"] == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("kind", ["http500", "http503", "btra9998", "drop"])
def test_find_payment_gives_up_after_max_attempts(client, sandbox, kind):
    sandbox.inject_fault(kind, "findPayment", times=10)
    with pytest.raises(TransientError):
        client.find_payment(UNKNOWN_ID)
    assert sandbox.counts()["findPayment"] == 3


@pytest.mark.parametrize(
    ("kind", "options"),
    [("http503", {}), ("btra9998", {}), ("drop", {}), ("timeout", {"delay": 1.5})],
)
def test_a_refund_that_may_have_arrived_is_never_sent_again(client, sandbox, kind, options):
    created = client.create_payment(total=Decimal("5.00"))
    sandbox.complete(str(created.ecommerce_id))
    reference = client.find_payment(created.ecommerce_id).reference_number
    sandbox.inject_fault(kind, "refund", times=5, **options)
    with pytest.raises(TransientError):
        client.refund(reference, Decimal("1.00"))
    assert sandbox.counts()["refund"] == 1


@pytest.mark.parametrize("endpoint", ["authorization", "payment"])
def test_capture_and_create_are_not_retried_after_sending(client, sandbox, endpoint):
    created = client.create_payment(total=Decimal("5.00"))
    sandbox.confirm(str(created.ecommerce_id))
    sandbox.inject_fault("http503", endpoint, times=5)
    with pytest.raises(TransientError):
        if endpoint == "authorization":
            client.authorize(created.auth_token)
        else:
            client.create_payment(total=Decimal("5.00"))
    assert sandbox.counts()[endpoint] == (2 if endpoint == "payment" else 1)


def test_rejected_credentials_fault_is_not_retried(client, sandbox, sleeps):
    sandbox.inject_fault("auth", "findPayment", times=5)
    with pytest.raises(AuthenticationError):
        client.find_payment(UNKNOWN_ID)
    assert sandbox.counts()["findPayment"] == 1 and sleeps == []


def test_a_wrongly_shaped_answer_is_a_clear_error(client, sandbox):
    sandbox.inject_fault("garbage", "findPayment")
    with pytest.raises(InvalidResponseError, match="no 'data' object"):
        client.find_payment(UNKNOWN_ID)
    assert sandbox.counts()["findPayment"] == 1


def test_the_total_deadline_bounds_a_call_however_many_attempts_remain(sandbox, sleeps):
    client = ATHMovilClient(
        "sandbox-public-token",
        api_base_url=sandbox.url,
        read_timeout=0.3,
        max_attempts=50,
        retry_deadline=1.0,
        sleep=sleeps.append,
    )
    sandbox.inject_fault("timeout", "findPayment", times=50, delay=2.0)
    with pytest.raises(TransientError, match="no whole answer within"):
        client.find_payment(UNKNOWN_ID)
    # 0.3 s reads within a 1 s deadline: a handful of attempts, nowhere near 50.
    assert 2 <= sandbox.counts()["findPayment"] <= 4
    client.close()


def test_calls_share_pooled_keep_alive_connections(client, sandbox):
    created = client.create_payment(total=Decimal("5.00"))
    before = sandbox.connections()
    for _ in range(20):
        client.find_payment(created.ecommerce_id)
    assert sandbox.connections() == before  # all 20 reused the connection already open
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda _: client.find_payment(created.ecommerce_id).status, range(80))
        )
    assert statuses == ["OPEN"] * 80
    assert sandbox.connections() - before <= 8  # never more than the pool holds
