"""The ATH Móvil client against `responses`: parsing every quirk, errors, retries, secrecy."""

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import requests
import responses

from athm_sync.client import (
    ATHMovilClient,
    ATHMovilError,
    AuthenticationError,
    AuthTokenError,
    InvalidRequestError,
    InvalidResponseError,
    InvalidStateError,
    NotFoundError,
    PaymentSnapshot,
    TransientError,
)

API = "https://api.example.test"
REPORT = "https://report.example.test"
FIND = f"{API}/api/business-transaction/ecommerce/business/findPayment"
CREATE = f"{API}/api/business-transaction/ecommerce/payment"
AUTHORIZE = f"{API}/api/business-transaction/ecommerce/authorization"
REFUND = f"{API}/api/business-transaction/ecommerce/refund"
CANCEL = f"{API}/api/business-transaction/ecommerce/business/cancel"
PHONE = f"{API}/api/business-transaction/ecommerce/business/updatePhoneNumber"
REPORT_URL = f"{REPORT}/transactions/v4/transactionReport"
SUBSCRIBE = f"{REPORT}/transactions/webhook/post"
PUBLIC, PRIVATE = "pub-SECRET-1234567890", "priv-SECRET-0987654321"
PAYMENT_ID = "4b0b2b3a-6c1f-4a44-9a0e-0b3c1d2e3f40"

# The captured findPayment answer from ATHM_API.md.
CAPTURED = {
    "ecommerceStatus": "COMPLETED",
    "ecommerceId": PAYMENT_ID,
    "referenceNumber": "215070443-402894c185ab1be40185acfe61c2000b",
    "businessCustomerId": "402894c185ab1be40185acfe61c2000b",
    "transactionDate": "2023-01-13 16:17:06",
    "dailyTransactionId": "0006",
    "businessName": "Tienda",
    "businessPath": "tienda",
    "industry": "RETAIL",
    "subTotal": 0,
    "tax": 0.00,
    "total": 1,
    "fee": 0.6000000238418579,
    "netAmount": 0.40,
    "totalRefundedAmount": 0,
    "metadata1": "order-1",
    "metadata2": "",
    "items": [],
    "isNonProfit": False,
}


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    return ATHMovilClient(
        PUBLIC,
        PRIVATE,
        api_base_url=API + "/",
        report_base_url=REPORT,
        max_attempts=3,
        retry_deadline=30,
        sleep=sleeps.append,
    )


def success(data):
    return {"status": "success", "data": data}


def error(code, message="nope"):
    return {"status": "error", "message": message, "errorcode": code, "data": None}


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quirk", "field", "expected"),
    [
        ({}, "status", "COMPLETED"),
        ({}, "fee", Decimal("0.60")),
        ({}, "net_amount", Decimal("0.40")),
        ({}, "total", Decimal("1.00")),
        ({}, "subtotal", Decimal("0.00")),
        ({}, "transaction_date", datetime(2023, 1, 13, 20, 17, 6, tzinfo=UTC)),
        ({}, "daily_transaction_id", "0006"),
        ({}, "ecommerce_id", uuid.UUID(PAYMENT_ID)),
        ({"ecommerceStatus": "completed"}, "status", "COMPLETED"),
        ({"ecommerceStatus": "Cancel"}, "status", "CANCEL"),
        ({"ecommerceStatus": "cancelled"}, "status", "CANCEL"),
        ({"ecommerceStatus": " open "}, "status", "OPEN"),
        ({"ecommerceStatus": "CONFIRM"}, "status", "CONFIRM"),
        ({"dailyTransactionId": 35}, "daily_transaction_id", "0035"),
        (
            {"dailyTransactionId": None, "dailyTransactionID": "0001"},
            "daily_transaction_id",
            "0001",
        ),
        ({"subTotal": None, "subtotal": "2.50"}, "subtotal", Decimal("2.50")),
        ({"total": "3.00"}, "total", Decimal("3.00")),
        ({"total": 3}, "total", Decimal("3.00")),
        ({"total": " 3.005 "}, "total", Decimal("3.01")),
        ({"tax": 0.1 + 0.2}, "tax", Decimal("0.30")),
        (
            {"totalRefundedAmount": None, "totalRefundAmount": "0.50"},
            "total_refunded_amount",
            Decimal("0.50"),
        ),
        ({"totalRefundedAmount": "1.5"}, "total_refunded_amount", Decimal("1.50")),
        ({"phoneNumber": 7875551234}, "customer_phone", "7875551234"),
        ({"phoneNumber": "(787) 555-1234"}, "customer_phone", "7875551234"),
        ({"referenceNumber": "215070443-abc "}, "reference_number", "215070443-abc"),
        ({"name": " Ana Ruiz"}, "customer_name", "Ana Ruiz"),
        ({"email": " ana@example.com "}, "customer_email", "ana@example.com"),
        (
            {"transactionDate": "2023-01-13 16:17:06.0"},
            "transaction_date",
            datetime(2023, 1, 13, 20, 17, 6, tzinfo=UTC),
        ),
        (
            {"transactionDate": "2023-12-31 22:30:00"},
            "transaction_date",
            datetime(2024, 1, 1, 2, 30, tzinfo=UTC),
        ),
        # Epoch timestamps are absolute (no Puerto Rico offset): seconds below 10**11,
        # milliseconds from there up; as numbers or as text.
        (
            {"transactionDate": 1673641026},
            "transaction_date",
            datetime(2023, 1, 13, 20, 17, 6, tzinfo=UTC),
        ),
        (
            {"transactionDate": "1673641026"},
            "transaction_date",
            datetime(2023, 1, 13, 20, 17, 6, tzinfo=UTC),
        ),
        (
            {"transactionDate": 1673641026789},
            "transaction_date",
            datetime(2023, 1, 13, 20, 17, 6, tzinfo=UTC),
        ),
        (
            {"transactionDate": "1673641026789"},
            "transaction_date",
            datetime(2023, 1, 13, 20, 17, 6, tzinfo=UTC),
        ),
        (
            {"items": '[{"name": "Café", "price": "2.00"}]'},
            "items",
            ({"name": "Café", "price": "2.00"},),
        ),
        ({"items": [{"name": "Café"}]}, "items", ({"name": "Café"},)),
        ({"items": ""}, "items", ()),
        ({"metadata1": " order-1 "}, "metadata_1", "order-1"),
        ({"metadata2": None}, "metadata_2", ""),
        ({"ecommerceId": PAYMENT_ID.upper()}, "ecommerce_id", uuid.UUID(PAYMENT_ID)),
    ],
)
def test_find_payment_normalises_every_quirk(client, quirk, field, expected):
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=success({**CAPTURED, **quirk}))
        snapshot = client.find_payment(PAYMENT_ID)
    assert getattr(snapshot, field) == expected


def test_snapshot_before_completion_has_no_reference_or_date(client):
    open_payment = {
        **CAPTURED,
        "ecommerceStatus": "OPEN",
        "referenceNumber": "",
        "transactionDate": "",
        "dailyTransactionId": "",
        "fee": 0,
        "netAmount": 0,
    }
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=success(open_payment))
        snapshot = client.find_payment(PAYMENT_ID)
    assert snapshot.status == "OPEN"
    assert (snapshot.reference_number, snapshot.transaction_date) == ("", None)
    assert snapshot.daily_transaction_id == ""
    assert snapshot.fee == Decimal("0.00")
    assert snapshot.raw["ecommerceStatus"] == "OPEN"


def test_find_payment_sends_id_and_public_token(client):
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=success(CAPTURED))
        client.find_payment(uuid.UUID(PAYMENT_ID))
        sent = json.loads(mock.calls[0].request.body)
    assert sent == {"ecommerceId": PAYMENT_ID, "publicToken": PUBLIC}


def test_snapshots_are_frozen_and_keep_the_raw_answer(client):
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=success(CAPTURED))
        snapshot = client.find_payment(PAYMENT_ID)
    assert isinstance(snapshot, PaymentSnapshot)
    assert snapshot.raw["fee"] == 0.6000000238418579
    with pytest.raises(AttributeError):
        snapshot.status = "OPEN"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("<html>Bad gateway</html>", "not JSON"),
        (json.dumps([1, 2]), "no 'data' object"),
        (json.dumps({"status": "success"}), "no 'data' object"),
        (json.dumps({"status": "success", "data": "nope"}), "no 'data' object"),
        (json.dumps(success({**CAPTURED, "ecommerceStatus": "PENDING"})), "ecommerceStatus"),
        (json.dumps(success({**CAPTURED, "total": "abc"})), "total"),
        (json.dumps(success({**CAPTURED, "total": {"amount": 1}})), "total"),
        (json.dumps(success({**CAPTURED, "fee": 1e300})), "fee 1e+300 is more than any"),
        (json.dumps(success({**CAPTURED, "total": "1e400"})), "total 1e400 is more than any"),
        (json.dumps(success({**CAPTURED, "netAmount": 10**12})), "netAmount"),
        (json.dumps(success({**CAPTURED, "transactionDate": "yesterday"})), "transactionDate"),
        (
            json.dumps(success({**CAPTURED, "transactionDate": "9999-12-31 23:59:59"})),
            "transactionDate '9999-12-31 23:59:59' is out of range",
        ),
        (json.dumps(success({**CAPTURED, "ecommerceId": None})), "ecommerceId"),
        (json.dumps(success({**CAPTURED, "items": "not json"})), "items"),
        (json.dumps(success({**CAPTURED, "name": ["a"]})), "name"),
    ],
)
def test_a_malformed_answer_is_a_clear_error_not_a_key_error(client, sleeps, answer, reason):
    with responses.RequestsMock() as mock:
        mock.post(FIND, body=answer, status=200)
        with pytest.raises(InvalidResponseError) as caught:
            client.find_payment(PAYMENT_ID)
    assert reason in str(caught.value)
    assert str(caught.value).startswith("ATH Móvil findPayment: ")
    assert sleeps == [], "a malformed answer is not retried"


# -- error classification ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        ("token.invalid.header", 401, AuthTokenError),
        ("token.expired", 401, AuthTokenError),
        ("BTRA_0401", 401, AuthenticationError),
        ("BTRA_0402", 200, AuthenticationError),
        ("BTRA_0403", 403, AuthenticationError),
        ("BTRA_0017", 400, AuthenticationError),
        ("BTRA_0031", 400, NotFoundError),
        ("btra_0031", 200, NotFoundError),
        ("BTRA_0007", 400, NotFoundError),
        ("BTRA_0014", 400, NotFoundError),
        ("BTRA_0053", 400, NotFoundError),
        ("BTRA_0032", 400, InvalidStateError),
        ("BTRA_0037", 400, InvalidStateError),
        ("BTRA_0039", 400, InvalidStateError),
        ("BTRA_0001", 400, InvalidRequestError),
        ("BTRA_0003", 400, InvalidRequestError),
        ("BTRA_0004", 400, InvalidRequestError),
        ("BTRA_0006", 400, InvalidRequestError),
        ("BTRA_0013", 400, InvalidRequestError),
        ("BTRA_0038", 400, InvalidRequestError),
        ("BTRA_0040", 400, InvalidRequestError),
        ("BTRA_9998", 200, TransientError),
        ("BTRA_9999", 500, TransientError),
        ("BTRA_0015", 400, TransientError),
        ("BTRA_0016", 400, TransientError),
        ("BTRA_1234", 503, TransientError),
        ("BTRA_1234", 404, NotFoundError),
        ("BTRA_1234", 422, InvalidRequestError),
        ("BTRA_1234", 200, ATHMovilError),
    ],
)
def test_error_envelopes_become_typed_errors(client, code, http_status, expected):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(FIND, json=error(code, "Something happened"), status=http_status)
        with pytest.raises(ATHMovilError) as caught:
            client.find_payment(PAYMENT_ID)
    assert type(caught.value) is expected
    assert caught.value.errorcode == code
    assert caught.value.message == "Something happened"
    assert code in str(caught.value)


@pytest.mark.parametrize(
    ("http_status", "expected"),
    [
        (500, TransientError),
        (502, TransientError),
        (429, TransientError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (400, InvalidRequestError),
    ],
)
def test_http_errors_without_an_envelope(client, http_status, expected):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(FIND, json={"unexpected": True}, status=http_status)
        with pytest.raises(expected) as caught:
            client.find_payment(PAYMENT_ID)
    assert caught.value.http_status == http_status


# -- retries -------------------------------------------------------------------------------


def test_transient_failures_of_find_payment_are_retried_with_backoff(client, sleeps):
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=error("BTRA_9999"), status=500)
        mock.post(FIND, json=error("BTRA_9998"), status=200)
        mock.post(FIND, json=success(CAPTURED))
        snapshot = client.find_payment(PAYMENT_ID)
        assert len(mock.calls) == 3
    assert snapshot.status == "COMPLETED"
    assert len(sleeps) == 2
    # Random exponential backoff: each wait is within its growing cap.
    assert 0 <= sleeps[0] <= 0.25 and 0 <= sleeps[1] <= 0.5


def test_retries_stop_after_max_attempts(client, sleeps):
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=error("BTRA_9998"), status=503)
        with pytest.raises(TransientError):
            client.find_payment(PAYMENT_ID)
        assert len(mock.calls) == 3
    assert len(sleeps) == 2


def test_retries_stop_before_the_deadline(sleeps):
    # A deadline shorter than any backoff: the first failure is the last attempt.
    client = ATHMovilClient(
        PUBLIC, api_base_url=API, max_attempts=10, retry_deadline=0.001, sleep=sleeps.append
    )
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=error("BTRA_9998"), status=503)
        with pytest.raises(TransientError):
            client.find_payment(PAYMENT_ID)
        assert len(mock.calls) < 10
        assert len(sleeps) == len(mock.calls) - 1


def test_no_retry_once_a_stop_is_asked(sleeps):
    """A run asked to stop (SIGTERM) does not wait out RETRY_DEADLINE: the failed call is
    not tried again, whether the stop came before the failure or during the wait after it."""
    stopping = []
    client = ATHMovilClient(
        PUBLIC,
        api_base_url=API,
        max_attempts=10,
        sleep=sleeps.append,
        should_stop=lambda: bool(stopping),
    )
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=error("BTRA_9998"), status=503)
        stopping.append("SIGTERM")
        with pytest.raises(TransientError, match="BTRA_9998"):
            client.find_payment(PAYMENT_ID)
        assert len(mock.calls) == 1 and sleeps == []

    def stop_while_waiting(seconds: float) -> None:
        sleeps.append(seconds)
        stopping.append("SIGTERM")

    stopping.clear()
    waiting = ATHMovilClient(
        PUBLIC,
        api_base_url=API,
        max_attempts=10,
        sleep=stop_while_waiting,
        should_stop=lambda: bool(stopping),
    )
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=error("BTRA_9998"), status=503)
        with pytest.raises(TransientError):
            waiting.find_payment(PAYMENT_ID)
        assert len(mock.calls) == 1 and len(sleeps) == 1


def test_a_read_timeout_is_retried_for_find_payment(client, sleeps):
    with responses.RequestsMock() as mock:
        mock.post(FIND, body=requests.ReadTimeout("read timed out"))
        mock.post(FIND, body=requests.ConnectionError("Connection aborted."))
        mock.post(FIND, json=success(CAPTURED))
        assert client.find_payment(PAYMENT_ID).status == "COMPLETED"
        assert len(mock.calls) == 3


@pytest.mark.parametrize(
    "code", ["BTRA_0401", "token.expired", "BTRA_0031", "BTRA_0032", "BTRA_0004"]
)
def test_errors_that_are_not_transient_are_never_retried(client, sleeps, code):
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=error(code), status=400)
        with pytest.raises(ATHMovilError):
            client.find_payment(PAYMENT_ID)
        assert len(mock.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "failure",
    [
        requests.ReadTimeout("read timed out"),
        requests.ConnectionError("Connection aborted: RemoteDisconnected"),
        # Not proof that nothing was sent: urllib3 raises it for TLS errors while reading the
        # answer too. A double replacing the transport never shows the request left unsent.
        requests.exceptions.SSLError("decryption failed or bad record mac"),
        "http503",
        "btra9998",
    ],
)
def test_refund_is_never_sent_twice_once_it_may_have_arrived(client, sleeps, failure):
    with responses.RequestsMock() as mock:
        if failure == "http503":
            mock.post(REFUND, json=error("BTRA_9999"), status=503)
        elif failure == "btra9998":
            mock.post(REFUND, json=error("BTRA_9998"), status=200)
        else:
            mock.post(REFUND, body=failure)
        with pytest.raises(TransientError):
            client.refund("215070443-abc", Decimal("1.00"))
        assert len(mock.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("call", "url"),
    [
        (lambda c: c.authorize("jwt"), AUTHORIZE),
        (lambda c: c.create_payment(total=Decimal("5.00")), CREATE),
    ],
)
def test_authorization_and_create_payment_are_not_retried_after_sending(client, call, url):
    with responses.RequestsMock() as mock:
        mock.post(url, json=error("BTRA_9999"), status=500)
        with pytest.raises(TransientError):
            call(client)
        assert len(mock.calls) == 1


def test_every_call_is_retried_when_the_connection_never_opened(sleeps):
    # Port 9 (discard) is closed on loopback: the connection is refused before sending.
    client = ATHMovilClient(
        PUBLIC,
        PRIVATE,
        api_base_url="http://127.0.0.1:9",
        max_attempts=3,
        sleep=sleeps.append,
    )
    with pytest.raises(TransientError) as caught:
        client.refund("215070443-abc", Decimal("1.00"))
    assert "could not connect" in str(caught.value)
    assert len(sleeps) == 2, "three attempts, two waits"


def test_each_retry_is_logged_without_tokens(client, caplog):
    caplog.set_level(logging.DEBUG, logger="athm_sync")
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=error("BTRA_9998", f"bad token {PUBLIC}"), status=503)
        mock.post(FIND, json=success(CAPTURED))
        client.find_payment(PAYMENT_ID)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1
    assert "attempt 1 of 3" in retries[0].getMessage()
    # DEBUG: an outage must not write a line per attempt per payment (the runner says it once).
    assert retries[0].levelno == logging.DEBUG
    assert all(PUBLIC not in r.getMessage() for r in caplog.records)


# -- secrecy -------------------------------------------------------------------------------


def test_tokens_never_appear_in_errors_or_reprs(client):
    with responses.RequestsMock() as mock:
        mock.post(REFUND, json=error("BTRA_0403", f"invalid {PRIVATE} for {PUBLIC}"), status=401)
        with pytest.raises(AuthenticationError) as caught:
            client.refund("ref", "1.00")
        mock.post(CREATE, json=success({"ecommerceId": PAYMENT_ID, "auth_token": "eyJ.jwt.sig"}))
        created = client.create_payment(total=Decimal("5.00"))
    assert PRIVATE not in str(caught.value) and PUBLIC not in str(caught.value)
    assert "***" in str(caught.value)
    assert PUBLIC not in repr(client) and PRIVATE not in repr(client)
    assert "eyJ.jwt.sig" not in repr(created)
    assert created.auth_token == "eyJ.jwt.sig"


def test_tokens_are_scrubbed_from_every_field_of_an_error_answer(client, caplog):
    caplog.set_level(logging.DEBUG, logger="athm_sync")
    echo = {
        "status": "error",
        "message": f"public {PUBLIC} private {PRIVATE}",
        "errorcode": f"BTRA_9998 {PRIVATE}",
        "data": {"publicToken": PUBLIC},
    }
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=echo, status=503)  # transient: retried, and each retry logged
        with pytest.raises(TransientError) as find_error:
            client.find_payment(PAYMENT_ID)
        mock.post(REFUND, json={**echo, "errorcode": {"code": PRIVATE}}, status=400)
        with pytest.raises(InvalidRequestError) as refund_error:
            client.refund("ref", "1.00")
        mock.post(AUTHORIZE, json=error(f"token.expired {'the-jwt'}", "bad the-jwt"), status=401)
        with pytest.raises(AuthenticationError) as authorize_error:
            client.authorize("the-jwt")
    for caught in (find_error, refund_error, authorize_error):
        shown = " ".join([str(caught.value), caught.value.message, caught.value.errorcode or ""])
        assert PUBLIC not in shown and PRIVATE not in shown and "the-jwt" not in shown
        assert "***" in shown
    assert find_error.value.errorcode == "BTRA_9998 ***"
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "retrying" in logged
    assert PUBLIC not in logged and PRIVATE not in logged


def test_tokens_are_scrubbed_from_malformed_answers(client):
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=success({**CAPTURED, "ecommerceStatus": f"odd {PUBLIC}"}))
        with pytest.raises(InvalidResponseError) as caught:
            client.find_payment(PAYMENT_ID)
        mock.get(REPORT_URL, json=[{"transactionType": "ECOMMERCE", "total": f"x{PRIVATE}"}])
        report = client.report_rows(datetime(2023, 1, 13, tzinfo=UTC), datetime.now(UTC))
    assert "is not a known ATH Móvil status" in str(caught.value)
    assert PUBLIC not in str(caught.value)
    [(_, reason)] = report.unparsable
    assert "must be an amount" in reason and PRIVATE not in reason


def test_an_answer_larger_than_the_limit_is_refused_and_a_refund_not_resent(sleeps):
    client = ATHMovilClient(
        PUBLIC, PRIVATE, api_base_url=API, max_answer_bytes=1000, sleep=sleeps.append
    )
    huge = success({**CAPTURED, "items": [{"name": "x" * 2000}]})
    with responses.RequestsMock() as mock:
        mock.post(FIND, json=huge, auto_calculate_content_length=True)
        with pytest.raises(InvalidResponseError, match=r"announces 2\d+ bytes"):
            client.find_payment(PAYMENT_ID)
        # Without a Content-Length, the count of what was read decides.
        mock.post(REFUND, body=b"{" + b" " * 2000)
        with pytest.raises(InvalidResponseError, match="more than 1000 bytes"):
            client.refund("ref", "1.00")
        assert len(mock.calls) == 2
    assert sleeps == []


# -- the other calls -----------------------------------------------------------------------


def test_create_payment_sends_amounts_as_cents_text(client):
    with responses.RequestsMock() as mock:
        mock.post(CREATE, json=success({"ecommerceId": PAYMENT_ID, "auth_token": "jwt"}))
        created = client.create_payment(
            total=Decimal("12.5"),
            subtotal=Decimal("11"),
            tax="1.50",
            metadata_1="order-7",
            items=[{"name": "Café", "price": "12.50", "quantity": "1"}],
            phone_number="(787) 555-1234",
            timeout=120,
        )
        sent = json.loads(mock.calls[0].request.body)
    assert created.ecommerce_id == uuid.UUID(PAYMENT_ID)
    assert sent["total"] == "12.50" and sent["subtotal"] == "11.00" and sent["tax"] == "1.50"
    assert sent["timeout"] == "120" and sent["phoneNumber"] == "7875551234"
    assert sent["publicToken"] == PUBLIC and sent["metadata1"] == "order-7"


@pytest.mark.parametrize("phone_number", [None, "", "  "])
def test_create_payment_without_a_phone_number_sends_no_phone_number(client, phone_number):
    # No phone: ATH Móvil pushes the payment request to nobody (an empty one is not a phone).
    with responses.RequestsMock() as mock:
        mock.post(CREATE, json=success({"ecommerceId": PAYMENT_ID, "auth_token": "jwt"}))
        client.create_payment(total=Decimal("5.00"), phone_number=phone_number)
        sent = json.loads(mock.calls[0].request.body)
    assert "phoneNumber" not in sent


def test_create_payment_refuses_float_money(client):
    with pytest.raises(ValueError, match="not a float"):
        client.create_payment(total=12.5)


def test_create_payment_without_auth_token_is_malformed(client):
    with responses.RequestsMock() as mock:
        mock.post(CREATE, json=success({"ecommerceId": PAYMENT_ID}))
        with pytest.raises(InvalidResponseError, match="auth_token"):
            client.create_payment(total=Decimal("5.00"))


def test_authorize_sends_the_bearer_token(client):
    with responses.RequestsMock() as mock:
        mock.post(AUTHORIZE, json=success(CAPTURED))
        snapshot = client.authorize("the-jwt")
        assert mock.calls[0].request.headers["Authorization"] == "Bearer the-jwt"
    assert snapshot.status == "COMPLETED"


def test_update_phone_number_puts_digits_with_the_bearer_token(client):
    with responses.RequestsMock() as mock:
        mock.put(PHONE, json={"status": "success", "data": None})
        client.update_phone_number(PAYMENT_ID, "(787) 555-0000", "the-jwt")
        request = mock.calls[0].request
    assert request.headers["Authorization"] == "Bearer the-jwt"
    assert json.loads(request.body) == {"ecommerceId": PAYMENT_ID, "phoneNumber": "7875550000"}


def test_cancel_returns_the_cancelled_payment(client):
    with responses.RequestsMock() as mock:
        mock.post(CANCEL, json=success({**CAPTURED, "ecommerceStatus": "CANCEL"}))
        assert client.cancel(PAYMENT_ID).status == "CANCEL"
        mock.post(CANCEL, json={"status": "success", "data": None})
        assert client.cancel(PAYMENT_ID) is None


def test_refund_parses_the_refund_and_the_original(client):
    answer = success(
        {
            "refund": {
                "transactionType": "REFUND",
                "status": "COMPLETED",
                "refundedAmount": "0.50",
                "date": "2023-01-14 10:00:00.0",
                "referenceNumber": "215070443-402894c185ab1be40185acfe61c2000b ",
                "dailyTransactionID": 7,
                "message": "sorry",
            },
            "originalTransaction": {**CAPTURED, "totalRefundedAmount": 0.5},
        }
    )
    with responses.RequestsMock() as mock:
        mock.post(REFUND, json=answer)
        result = client.refund("215070443-402894c185ab1be40185acfe61c2000b", "0.5", "sorry")
        sent = json.loads(mock.calls[0].request.body)
    assert sent["amount"] == "0.50" and sent["privateToken"] == PRIVATE
    assert result.amount == Decimal("0.50")
    assert result.reference_number == "215070443-402894c185ab1be40185acfe61c2000b"
    assert result.daily_transaction_id == "0007"
    assert result.transaction_date == datetime(2023, 1, 14, 14, 0, tzinfo=UTC)
    assert result.payment.total_refunded_amount == Decimal("0.50")


# Evertec's documented refund answer, from evertec/athmovil-javascript-api README.md, "Refund
# Payment" (the Payment Button API's /api/business-transaction/ecommerce/refund). Verbatim but
# for the two "// timestamp" and two "// ... transactionId" comments, which JSON cannot hold.
DOCUMENTED_REFUND_ANSWER = """
{
  "status": "success",
  "data": {
    "refund": {
      "transactionType": "REFUND",
      "status": "COMPLETED",
      "refundedAmount": 1.00,
      "date": "123412341234",
      "referenceNumber": "402894d56b240610016b2e6c78a6003a",
      "dailyTransactionID": "0107",
      "name": "Valeria Herrero",
      "phoneNumber": "(787) 123-4567",
      "email": "valher@gmail.com"
    },
    "originalTransaction": {
      "transactionType": "PAYMENT",
      "status": "COMPLETED",
      "date": "123412341234",
      "referenceNumber": "402894d56b240610016b2e6c78a6003a",
      "dailyTransactionID": "0106",
      "name": "Valeria Herrero",
      "phoneNumber": "(787) 123-4567",
      "email": "valher@gmail.com",
      "message": "",
      "total": 1.00,
      "tax": 0.00,
      "subtotal": 0.00,
      "fee": 0.00,
      "netAmount": 0.00,
      "totalRefundedAmount": 1.00,
      "metadata1": "metadata1 test",
      "metadata2": "metadata2 test",
      "items": []
    }
  }
}
"""

# The same answer as the older v4 API documents it (evertec/athmovil-javascript-api, "Old
# Version PB README.md", "Refund": https://www.athmovil.com/api/v4/refundTransaction):
# verbatim, without the envelope, with local dates ending in ".0" and numeric daily ids.
DOCUMENTED_V4_REFUND_ANSWER = """
{
    "refund": {
        "transactionType": "REFUND",
        "status": "COMPLETED",
        "refundedAmount": 1.00,
        "date": "2021-07-08 18:13:58.0",
        "referenceNumber": "402894d56b240610016b2e6c78a6003a",
        "dailyTransactionID": 107,
        "name": " Valeria Herrero",
        "phoneNumber": "(787) 123-4567",
        "email": "valher@gmail.com"
    },
    "originalTransaction": {
        "transactionType": "PAYMENT",
        "status": "COMPLETED",
        "date": "2021-07-08 18:12:00.0",
        "referenceNumber": "402894d56b240610016b2e6c78a6003a",
        "dailyTransactionID": 106,
        "name": "Valeria Herrero",
        "phoneNumber": "(787) 123-4567",
        "email": "valher@gmail.com",
        "message": "",
        "total": 1.00,
        "tax": 0.00,
        "subtotal": 0.00,
        "fee": 0.00,
        "netAmount": 0.00,
        "totalRefundedAmount": 1.00,
        "metadata1": "metadata1 test",
        "metadata2": "metadata2 test",
        "items": []
    }
}
"""
DOCUMENTED_REFERENCE = "402894d56b240610016b2e6c78a6003a"


def refund_with(client, answer, **options):
    with responses.RequestsMock() as mock:
        mock.post(REFUND, body=answer, content_type="application/json")
        result = client.refund(DOCUMENTED_REFERENCE, "1.00", **options)
        assert len(mock.calls) == 1
    return result


def test_the_documented_refund_answer_is_read_in_full(client):
    result = refund_with(client, DOCUMENTED_REFUND_ANSWER, ecommerce_id=PAYMENT_ID)

    assert (result.amount, result.status) == (Decimal("1.00"), "COMPLETED")
    assert result.reference_number == DOCUMENTED_REFERENCE
    assert result.daily_transaction_id == "0107"
    # "123412341234" is an epoch timestamp: 10**11 or more counts milliseconds.
    assert result.transaction_date == datetime(1973, 11, 29, 9, 12, 21, tzinfo=UTC)
    original = result.payment
    assert original.ecommerce_id == uuid.UUID(PAYMENT_ID)  # the caller's: the answer has none
    assert (original.status, original.daily_transaction_id) == ("COMPLETED", "0106")
    assert original.total == original.total_refunded_amount == Decimal("1.00")
    assert original.transaction_date == result.transaction_date
    assert original.metadata_1 == "metadata1 test"
    assert original.customer_phone == "7871234567"
    assert original.raw["transactionType"] == "PAYMENT"


def test_the_documented_v4_refund_answer_is_read_in_full(client):
    result = refund_with(client, DOCUMENTED_V4_REFUND_ANSWER, ecommerce_id=PAYMENT_ID)

    assert result.amount == Decimal("1.00") and result.daily_transaction_id == "0107"
    # Local Puerto Rico time with ".0": four hours behind UTC.
    assert result.transaction_date == datetime(2021, 7, 8, 22, 13, 58, tzinfo=UTC)
    assert result.payment.transaction_date == datetime(2021, 7, 8, 22, 12, tzinfo=UTC)
    assert result.payment.daily_transaction_id == "0106"
    assert result.payment.ecommerce_id == uuid.UUID(PAYMENT_ID)


def test_a_refund_answer_without_an_ecommerce_id_names_no_payment_unless_told(client):
    assert refund_with(client, DOCUMENTED_REFUND_ANSWER).payment is None
    # About another reference number than the one refunded: not taken as the payment's.
    answer = json.loads(DOCUMENTED_REFUND_ANSWER)
    answer["data"]["originalTransaction"]["referenceNumber"] = "another-reference"
    other = json.dumps(answer)
    result = refund_with(client, other, ecommerce_id=PAYMENT_ID)
    assert result.payment is None
    assert result.daily_transaction_id == "0107"  # the refund itself is still read


def test_refund_checks_its_arguments_before_calling(sleeps):
    no_private = ATHMovilClient(PUBLIC, api_base_url=API, sleep=sleeps.append)
    with responses.RequestsMock():  # any request would fail the test
        with pytest.raises(ValueError, match="private token"):
            no_private.refund("ref", "1.00")
        with pytest.raises(ValueError, match="50 characters"):
            no_private.refund("ref", "1.00", "x" * 51)


def test_transaction_report_sends_puerto_rico_times_and_parses_rows(client):
    rows = [
        {
            "transactionType": "ecommerce",
            "status": "COMPLETED",
            "date": "2023-01-13 16:17:06.0",
            "referenceNumber": "ref-1 ",
            "dailyTransactionID": 35,
            "name": " Ana",
            "phoneNumber": 7875551234,
            "email": "a@example.com",
            "message": "",
            "total": "3.00",
            "tax": 0,
            "subtotal": 3,
            "fee": 0.6000000238418579,
            "netAmount": 2.4,
            "totalRefundAmount": "1.00",
            "metadata1": "m1",
            "metadata2": "m2",
            "items": '[{"name": "x"}]',
            "ecommerceId": PAYMENT_ID,
        },
        {
            "transactionType": "REFUND",
            "status": "completed",
            "total": 1,
            "referenceNumber": "ref-1",
        },
    ]
    with responses.RequestsMock() as mock:
        mock.get(REPORT_URL, json=rows)
        report = client.transaction_report(
            datetime(2023, 1, 13, 4, 0, tzinfo=UTC), datetime(2023, 1, 14, 3, 59, 59, tzinfo=UTC)
        )
        sent = json.loads(mock.calls[0].request.body)
    assert sent["fromDate"] == "2023-01-13 00:00:00" and sent["toDate"] == "2023-01-13 23:59:59"
    payment, refund = report
    assert payment.transaction_type == "ECOMMERCE" and payment.ecommerce_id == uuid.UUID(PAYMENT_ID)
    assert payment.total_refunded_amount == Decimal("1.00") and payment.items == ({"name": "x"},)
    assert payment.daily_transaction_id == "0035" and payment.customer_phone == "7875551234"
    assert refund.transaction_type == "REFUND" and refund.ecommerce_id is None
    assert refund.status == "COMPLETED" and refund.total == Decimal("1.00")


def test_report_rows_keeps_the_rows_that_parse_and_names_the_others(client):
    good = {"transactionType": "REFUND", "total": "2.00", "referenceNumber": "ref-2 "}
    rows = [good, {"transactionType": "REFUND", "total": "two dollars"}, "not a row", good]
    with responses.RequestsMock() as mock:
        mock.get(REPORT_URL, json=rows)
        report = client.report_rows(datetime.now(UTC), datetime.now(UTC))
        with pytest.raises(InvalidResponseError, match="row 1: total must be an amount"):
            client.transaction_report(datetime.now(UTC), datetime.now(UTC))
    assert [row.reference_number for row in report.transactions] == ["ref-2", "ref-2"]
    assert [index for index, _ in report.unparsable] == [1, 2]
    assert "total must be an amount" in report.unparsable[0][1]
    assert "must be an object" in report.unparsable[1][1]


@pytest.mark.parametrize("code", ["BTRA_0022", "BTRA_0046"])
def test_an_empty_report_is_an_empty_list(client, code):
    with responses.RequestsMock() as mock:
        mock.get(REPORT_URL, json=error(code, "No transactions"), status=400)
        assert client.transaction_report(datetime.now(UTC), datetime.now(UTC)) == []


def test_a_report_with_a_bad_range_is_an_invalid_request(client):
    with responses.RequestsMock() as mock:
        mock.get(REPORT_URL, json=error("BTRA_0026", "Range too long"), status=400)
        with pytest.raises(InvalidRequestError, match="Range too long"):
            client.transaction_report(datetime.now(UTC), datetime.now(UTC))


def test_report_dates_must_be_aware(client):
    with pytest.raises(ValueError, match="timezone-aware"):
        client.transaction_report(datetime(2023, 1, 1), datetime(2023, 1, 2))


def test_subscribe_webhooks_sends_the_chosen_events(client):
    with responses.RequestsMock() as mock:
        mock.post(SUBSCRIBE, json={"status": "success", "message": "saved"})
        answer = client.subscribe_webhooks(
            "https://shop.example/athm/webhook/abc/", ecommerce_payment_expired=False
        )
        sent = json.loads(mock.calls[0].request.body)
    assert answer["status"] == "success"
    assert sent["listenerURL"] == "https://shop.example/athm/webhook/abc/"
    assert sent["ecommercePaymentReceivedEvent"] is True
    assert sent["ecommercePaymentExpiredEvent"] is False
    assert sent["paymentReceivedEvent"] is False


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"public_token": " "}, "public_token"),
        ({"public_token": None}, "public_token"),
        ({"private_token": 5}, "private_token"),
        ({"api_base_url": "ftp://x"}, "api_base_url must be an http(s) URL"),
        ({"report_base_url": "nope"}, "report_base_url must be an http(s) URL"),
        ({"max_attempts": 0}, "max_attempts must be a whole number of at least 1"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"read_timeout": -1}, "read_timeout must be a number greater than 0"),
        ({"connect_timeout": "3"}, "connect_timeout"),
        ({"retry_deadline": 0}, "retry_deadline"),
        ({"pool_size": 0}, "pool_size"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ATHMovilClient(**{"public_token": PUBLIC, **kwargs})


def test_the_connection_pool_is_sized_for_concurrent_workers():
    client = ATHMovilClient(PUBLIC, pool_size=16)
    adapter = client.session.get_adapter("https://payments.athmovil.com")
    assert adapter._pool_maxsize == 16
    assert adapter.max_retries.total == 0


def test_from_settings_reads_athm_sync(settings):
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "API_BASE_URL": "https://x.test/", "WORKERS": 12}
    client = ATHMovilClient.from_settings()
    assert client.api_base_url == "https://x.test"
    assert client.pool_size == 12  # never smaller than the number of workers
