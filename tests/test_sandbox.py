"""The sandbox ATH Móvil server: real paths and shapes, lifecycle, faults, control API, CLI.

Plain ``requests`` against the in-process server; time moves only through the sandbox clock.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from athm_sync.sandbox import FAULT_KINDS, SandboxServer, fee_for
from athm_sync.sandbox.__main__ import main
from athm_sync.sandbox.formats import float32
from tests import documented_webhooks as documented

PUBLIC = "sandbox-public-token"
PRIVATE = "sandbox-private-token"
ECOM = "/api/business-transaction/ecommerce"
PR = timedelta(hours=-4)
DATE_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
FIND_KEYS = {
    "ecommerceStatus",
    "ecommerceId",
    "referenceNumber",
    "businessCustomerId",
    "transactionDate",
    "dailyTransactionId",
    "businessName",
    "businessPath",
    "industry",
    "subTotal",
    "tax",
    "total",
    "fee",
    "netAmount",
    "totalRefundedAmount",
    "metadata1",
    "metadata2",
    "items",
    "isNonProfit",
}
CUSTOMER_KEYS = {"name", "phoneNumber", "email"}
# The originalTransaction of Evertec's documented refund answer (athmovil-javascript-api's
# README, "Refund Payment").
REFUND_ORIGINAL_KEYS = {
    "transactionType",
    "status",
    "date",
    "referenceNumber",
    "dailyTransactionID",
    "name",
    "phoneNumber",
    "email",
    "message",
    "total",
    "tax",
    "subtotal",
    "fee",
    "netAmount",
    "totalRefundedAmount",
    "metadata1",
    "metadata2",
    "items",
}


# -- helpers ---------------------------------------------------------------------------------


def create(sandbox: SandboxServer, **body: Any) -> dict[str, Any]:
    body = {"publicToken": PUBLIC, "total": "10.00", "metadata1": "order-1", **body}
    response = requests.post(f"{sandbox.url}{ECOM}/payment", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def find(sandbox: SandboxServer, ecommerce_id: str, **extra: Any) -> requests.Response:
    body = {"ecommerceId": ecommerce_id, "publicToken": PUBLIC, **extra}
    return requests.post(f"{sandbox.url}{ECOM}/business/findPayment", json=body, timeout=5)


def found(sandbox: SandboxServer, ecommerce_id: str) -> dict[str, Any]:
    response = find(sandbox, ecommerce_id)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def authorize(sandbox: SandboxServer, token: str | None) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.post(f"{sandbox.url}{ECOM}/authorization", json={}, headers=headers, timeout=5)


def refund(sandbox: SandboxServer, reference: str, amount: str, **extra: Any) -> requests.Response:
    body = {
        "publicToken": PUBLIC,
        "privateToken": PRIVATE,
        "referenceNumber": reference,
        "amount": amount,
        "message": "sorry",
        **extra,
    }
    return requests.post(f"{sandbox.url}{ECOM}/refund", json=body, timeout=5)


def report(sandbox: SandboxServer, from_date: str, to_date: str) -> requests.Response:
    body = {
        "publicToken": PUBLIC,
        "privateToken": PRIVATE,
        "fromDate": from_date,
        "toDate": to_date,
    }
    return requests.get(f"{sandbox.url}/transactions/v4/transactionReport", json=body, timeout=5)


def pr_local(moment: datetime) -> str:
    return (moment.astimezone(UTC) + PR).strftime("%Y-%m-%d %H:%M:%S")


def assert_error(response: requests.Response, code: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["errorcode"] == code
    assert body["data"] is None
    assert body["message"]
    return body


def completed(sandbox: SandboxServer, total: str = "10.00") -> dict[str, Any]:
    created = create(sandbox, total=total)
    sandbox.complete(created["ecommerceId"])
    return found(sandbox, created["ecommerceId"])


class Listener:
    """A tiny webhook receiver on loopback that records what it is posted."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        received, arrived = self.received, self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                arrived.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    hooks = Listener()
    yield hooks
    hooks.close()


# -- create and findPayment ----------------------------------------------------------------------


def test_create_answers_id_and_a_jwt_expiring_in_15_minutes(sandbox):
    data = create(sandbox)
    assert set(data) == {"ecommerceId", "auth_token"}
    assert re.fullmatch(r"[0-9a-f-]{36}", data["ecommerceId"])
    _header, payload, signature = data["auth_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["ecommerceId"] == data["ecommerceId"]
    assert claims["exp"] - int(sandbox.now().timestamp()) in range(899, 901)
    assert signature


def test_find_payment_before_completion(sandbox):
    data = create(sandbox, total="3.50", subtotal=3, tax="0.50", items=[{"name": "tea"}])
    answer = found(sandbox, data["ecommerceId"])
    assert set(answer) == FIND_KEYS
    assert answer["ecommerceStatus"] == "OPEN"
    assert answer["referenceNumber"] == ""
    assert answer["transactionDate"] == ""
    assert answer["dailyTransactionId"] == ""
    assert answer["fee"] == 0 and answer["netAmount"] == 0
    assert answer["subTotal"] == 3 and answer["tax"] == 0.5 and answer["total"] == 3.5
    assert answer["items"] == [{"name": "tea"}]
    assert answer["metadata1"] == "order-1"
    assert answer["isNonProfit"] is False


def test_find_payment_after_completion(sandbox):
    data = create(sandbox, total="10.00")
    sandbox.confirm(data["ecommerceId"], name="Ana", phone="(787) 555-0000", email="a@b.pr")
    confirmed = found(sandbox, data["ecommerceId"])
    assert confirmed["ecommerceStatus"] == "CONFIRM"
    assert set(confirmed) == FIND_KEYS | CUSTOMER_KEYS
    assert confirmed["name"] == "Ana" and confirmed["phoneNumber"] == "(787) 555-0000"

    sandbox.capture(data["ecommerceId"])
    answer = found(sandbox, data["ecommerceId"])
    assert answer["ecommerceStatus"] == "COMPLETED"
    assert re.fullmatch(r"\d{9}-[0-9a-f]{32}", answer["referenceNumber"])
    assert re.fullmatch(r"\d{4}", answer["dailyTransactionId"])
    # The fee is float32 noise around the sandbox rule (2.5 % + $0.10 = 0.35 on $10).
    assert fee_for(Decimal("10.00")) == Decimal("0.35")
    assert answer["fee"] == float32(Decimal("0.35")) != 0.35
    assert Decimal(str(answer["fee"])).quantize(Decimal("0.01")) == Decimal("0.35")
    assert answer["netAmount"] == 9.65
    # Puerto Rico local time, whatever the machine's zone.
    assert DATE_RE.match(answer["transactionDate"])
    assert answer["transactionDate"] == pr_local(sandbox.now()) or answer[
        "transactionDate"
    ] == pr_local(sandbox.now() - timedelta(seconds=1))


def test_daily_transaction_ids_count_up(sandbox):
    first, second = completed(sandbox), completed(sandbox)
    assert (first["dailyTransactionId"], second["dailyTransactionId"]) == ("0001", "0002")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"total": "0.99"}, "BTRA_0004"),
        ({"total": "1500.01"}, "BTRA_0004"),
        ({"total": "ten"}, "BTRA_0004"),
        ({"total": None}, "BTRA_0003"),
        ({"metadata1": "x" * 41}, "BTRA_0038"),
        ({"metadata2": "x" * 41}, "BTRA_0038"),
        ({"timeout": "119"}, "BTRA_0006"),
        ({"timeout": 601}, "BTRA_0006"),
        ({"timeout": "soon"}, "BTRA_0006"),
        ({"items": "nope"}, "BTRA_0040"),
    ],
)
def test_create_rejects_invalid_fields(sandbox, body, code):
    full = {"publicToken": PUBLIC, "total": "5.00", **body}
    response = requests.post(f"{sandbox.url}{ECOM}/payment", json=full, timeout=5)
    assert_error(response, code)


def test_create_accepts_timeout_bounds_as_string_or_int(sandbox):
    for timeout in ("120", 600, "600"):
        assert create(sandbox, timeout=timeout)["ecommerceId"]


def test_body_that_is_not_json_is_invalid(sandbox):
    response = requests.post(f"{sandbox.url}{ECOM}/payment", data=b"{nope", timeout=5)
    assert "body" in assert_error(response, "BTRA_0001")["message"]


def test_credentials_and_unknown_payment(sandbox):
    assert_error(
        find(sandbox, create(sandbox)["ecommerceId"], publicToken="wrong"), "BTRA_0401", 401
    )
    assert_error(find(sandbox, "00000000-0000-4000-8000-000000000000"), "BTRA_0031")
    data = completed(sandbox)
    assert_error(
        refund(sandbox, data["referenceNumber"], "1.00", privateToken="wrong"), "BTRA_0403", 401
    )


def test_unknown_path_and_wrong_method(sandbox):
    response = requests.get(f"{sandbox.url}/api/nothing", timeout=5)
    assert response.status_code == 404
    assert response.json()["status"] == "error"
    response = requests.get(f"{sandbox.url}{ECOM}/payment", timeout=5)
    assert response.status_code == 405


# -- authorization, phone, cancel, expiry ----------------------------------------------------------


def test_authorization_captures_a_confirmed_payment_idempotently(sandbox):
    data = create(sandbox)
    assert_error(authorize(sandbox, data["auth_token"]), "BTRA_0032")  # still OPEN
    sandbox.confirm(data["ecommerceId"])
    first = authorize(sandbox, data["auth_token"])
    assert first.status_code == 200
    answer = first.json()["data"]
    assert set(answer) == FIND_KEYS | CUSTOMER_KEYS
    assert answer["ecommerceStatus"] == "COMPLETED"
    again = authorize(sandbox, data["auth_token"]).json()["data"]
    assert again["referenceNumber"] == answer["referenceNumber"]
    assert again["dailyTransactionId"] == answer["dailyTransactionId"]


def test_authorization_token_errors(sandbox):
    data = create(sandbox)
    sandbox.confirm(data["ecommerceId"])
    assert_error(authorize(sandbox, None), "token.invalid.header", 401)
    assert_error(authorize(sandbox, "not-a-jwt"), "token.invalid.header", 401)
    header, payload, _ = data["auth_token"].split(".")
    assert_error(authorize(sandbox, f"{header}.{payload}.forged"), "token.invalid.header", 401)
    sandbox.advance(15 * 60 + 1)
    assert_error(authorize(sandbox, data["auth_token"]), "token.expired", 401)


def test_authorization_of_cancelled_and_expired_payments(sandbox):
    cancelled = create(sandbox)
    sandbox.confirm(cancelled["ecommerceId"])
    sandbox.cancel(cancelled["ecommerceId"])
    assert_error(authorize(sandbox, cancelled["auth_token"]), "BTRA_0037")

    late = create(sandbox, timeout=120)
    sandbox.confirm(late["ecommerceId"])
    sandbox.advance(121)
    assert_error(authorize(sandbox, late["auth_token"]), "BTRA_0039")
    assert found(sandbox, late["ecommerceId"])["ecommerceStatus"] == "CANCEL"


def test_update_phone_number(sandbox):
    data = create(sandbox, phoneNumber="7875550000")
    url = f"{sandbox.url}{ECOM}/business/updatePhoneNumber"
    body = {"ecommerceId": data["ecommerceId"], "phoneNumber": "7875551111"}
    ok = requests.put(
        url, json=body, headers={"Authorization": f"Bearer {data['auth_token']}"}, timeout=5
    )
    assert ok.status_code == 200 and ok.json()["status"] == "success"
    assert sandbox.payment(data["ecommerceId"])["phoneNumber"] == "7875551111"
    assert_error(requests.put(url, json=body, timeout=5), "token.invalid.header", 401)


def test_cancel_api(sandbox):
    url = f"{sandbox.url}{ECOM}/business/cancel"
    data = create(sandbox)
    body = {"ecommerceId": data["ecommerceId"], "publicToken": PUBLIC}
    answer = requests.post(url, json=body, timeout=5).json()
    assert answer["status"] == "success"
    assert answer["data"]["ecommerceStatus"] == "CANCEL"
    assert sandbox.payment(data["ecommerceId"])["cancelReason"] == "cancelled"

    done = completed(sandbox)
    body = {"ecommerceId": done["ecommerceId"], "publicToken": PUBLIC}
    assert_error(requests.post(url, json=body, timeout=5), "BTRA_0037")


def test_expiry_follows_each_payments_own_timeout(sandbox):
    short = create(sandbox, timeout="120")["ecommerceId"]
    long = create(sandbox, timeout=600)["ecommerceId"]
    sandbox.confirm(long)
    sandbox.advance(119)
    assert found(sandbox, short)["ecommerceStatus"] == "OPEN"
    sandbox.advance(1)
    assert found(sandbox, short)["ecommerceStatus"] == "CANCEL"
    assert found(sandbox, long)["ecommerceStatus"] == "CONFIRM"
    sandbox.advance(479)
    assert found(sandbox, long)["ecommerceStatus"] == "CONFIRM"
    sandbox.advance(1)
    assert found(sandbox, long)["ecommerceStatus"] == "CANCEL"
    # findPayment cannot tell expired from cancelled; the sandbox's own view can.
    assert sandbox.payment(long)["cancelReason"] == "expired"


def test_expire_control_and_clock_follow_time_machine(sandbox):
    time_machine = pytest.importorskip("time_machine")
    data = create(sandbox)
    sandbox.expire(data["ecommerceId"])
    assert found(sandbox, data["ecommerceId"])["ecommerceStatus"] == "CANCEL"
    other = create(sandbox, timeout=120)["ecommerceId"]
    with time_machine.travel(sandbox.now() + timedelta(seconds=200), tick=False):
        assert found(sandbox, other)["ecommerceStatus"] == "CANCEL"


# -- refunds -----------------------------------------------------------------------------------


def test_partial_refunds_share_the_reference_number(sandbox):
    payment = completed(sandbox, total="10.00")
    reference = payment["referenceNumber"]
    first = refund(sandbox, reference, "4.00")
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert data["refund"]["transactionType"] == "REFUND"
    assert data["refund"]["status"] == "COMPLETED"
    assert data["refund"]["refundedAmount"] == "4.00"
    assert data["refund"]["referenceNumber"] == reference
    assert re.fullmatch(r"\d{4}", data["refund"]["dailyTransactionID"])
    # Evertec's documented answer: dates as epoch timestamps (milliseconds, as text), and the
    # original payment as a PAYMENT transaction without its ecommerceId.
    assert re.fullmatch(r"\d{13}", data["refund"]["date"])
    refunded_at = datetime.fromtimestamp(int(data["refund"]["date"]) / 1000, UTC)
    assert abs(refunded_at - sandbox.now()) < timedelta(minutes=1)
    assert data["refund"]["message"] == "sorry"
    original = data["originalTransaction"]
    assert set(original) == REFUND_ORIGINAL_KEYS
    assert original["transactionType"] == "PAYMENT" and original["status"] == "COMPLETED"
    assert original["referenceNumber"] == reference
    assert original["dailyTransactionID"] == payment["dailyTransactionId"]
    assert original["date"] == str(
        int(
            datetime.fromisoformat(payment["transactionDate"])
            .replace(tzinfo=timezone(PR))
            .timestamp()
        )
        * 1000
    )
    assert original["totalRefundedAmount"] == 4

    second = refund(sandbox, reference, "6.00").json()["data"]
    assert second["refund"]["referenceNumber"] == reference
    assert second["originalTransaction"]["totalRefundedAmount"] == 10
    assert_error(refund(sandbox, reference, "0.01"), "BTRA_0013")
    assert found(sandbox, payment["ecommerceId"])["totalRefundedAmount"] == 10


def test_refund_errors(sandbox):
    payment = completed(sandbox, total="5.00")
    assert_error(refund(sandbox, payment["referenceNumber"], "5.01"), "BTRA_0013")
    assert_error(refund(sandbox, payment["referenceNumber"], "0"), "BTRA_0004")
    assert_error(refund(sandbox, payment["referenceNumber"], "1", message="m" * 51), "BTRA_0040")
    assert_error(refund(sandbox, "123-nope", "1.00"), "BTRA_0007")


def test_app_refund_grows_total_refunded(sandbox):
    payment = completed(sandbox, total="8.00")
    sandbox.refund(payment["ecommerceId"], "3.00", message="app")
    state = sandbox.payment(payment["ecommerceId"])
    assert state["totalRefundedAmount"] == "3.00"
    assert state["refunds"][0]["source"] == "app"
    assert found(sandbox, payment["ecommerceId"])["totalRefundedAmount"] == 3


# -- the report ----------------------------------------------------------------------------------


def test_report_lists_payments_and_refunds(sandbox):
    first = completed(sandbox, total="10.00")
    second = completed(sandbox, total="2.50")
    refund(sandbox, first["referenceNumber"], "1.00")
    create(sandbox)  # never completed: not in the report
    now = sandbox.now()
    response = report(sandbox, pr_local(now - timedelta(hours=1)), pr_local(now))
    assert response.status_code == 200, response.text
    rows = response.json()
    assert isinstance(rows, list)
    assert [row["transactionType"] for row in rows] == ["ECOMMERCE", "ECOMMERCE", "REFUND"]
    for row in rows:
        assert {
            "date",
            "referenceNumber",
            "dailyTransactionID",
            "name",
            "phoneNumber",
            "email",
            "message",
            "total",
            "tax",
            "subtotal",
            "fee",
            "netAmount",
            "totalRefundAmount",
            "metadata1",
            "metadata2",
            "items",
            "ecommerceId",
        } <= set(row)
        assert isinstance(row["items"], str)
        json.loads(row["items"])
    assert rows[0]["ecommerceId"] == first["ecommerceId"]
    assert rows[0]["totalRefundAmount"] == 1
    assert rows[1]["ecommerceId"] == second["ecommerceId"]
    # The real report mixes types: the second row has numbers where the first has strings.
    assert isinstance(rows[0]["dailyTransactionID"], str)
    assert isinstance(rows[1]["dailyTransactionID"], int)
    assert rows[1]["phoneNumber"] == 7875551234
    assert rows[2]["referenceNumber"] == first["referenceNumber"]
    assert rows[2]["total"] == 1


def test_report_errors(sandbox):
    now = sandbox.now()
    assert_error(report(sandbox, pr_local(now - timedelta(hours=1)), pr_local(now)), "BTRA_0022")
    assert_error(report(sandbox, pr_local(now), pr_local(now - timedelta(days=1))), "BTRA_0025")
    assert_error(report(sandbox, pr_local(now - timedelta(days=32)), pr_local(now)), "BTRA_0026")
    assert_error(
        report(sandbox, pr_local(now + timedelta(days=1)), pr_local(now + timedelta(days=2))),
        "BTRA_0047",
    )
    assert_error(report(sandbox, "yesterday", pr_local(now)), "BTRA_0001")
    body = {"publicToken": PUBLIC, "privateToken": "bad", "fromDate": "x", "toDate": "y"}
    response = requests.get(
        f"{sandbox.url}/transactions/v4/transactionReport", json=body, timeout=5
    )
    assert_error(response, "BTRA_0403", 401)


# -- webhooks ------------------------------------------------------------------------------------


def subscribe(sandbox: SandboxServer, url: str, **flags: bool) -> requests.Response:
    body = {
        "publicToken": PUBLIC,
        "privateToken": PRIVATE,
        "listenerURL": url,
        "paymentReceivedEvent": True,
        "refundSentEvent": True,
        "donationReceivedEvent": False,
        "ecommercePaymentReceivedEvent": True,
        "ecommercePaymentCancelledEvent": True,
        "ecommercePaymentExpiredEvent": True,
        **flags,
    }
    return requests.post(f"{sandbox.url}/transactions/webhook/post", json=body, timeout=5)


def test_webhook_subscription_is_stored(sandbox, listener):
    response = subscribe(sandbox, listener.url, donationReceivedEvent=False)
    assert response.status_code == 200 and response.json()["status"] == "success"
    assert sandbox.state.subscription["listenerURL"] == listener.url
    assert sandbox.state.subscription["donationReceivedEvent"] is False
    assert sandbox.state.subscription["refundSentEvent"] is True
    missing = {"publicToken": PUBLIC, "privateToken": PRIVATE}
    response = requests.post(f"{sandbox.url}/transactions/webhook/post", json=missing, timeout=5)
    assert_error(response, "BTRA_0003")


def test_webhook_payload_shapes(sandbox):
    payment = completed(sandbox, total="10.00")
    payload = sandbox.webhook_payload(payment["ecommerceId"])
    assert payload["transactionType"] == "ecommerce"
    assert payload["status"] == "completed"
    assert payload["referenceNumber"] == payment["referenceNumber"]
    assert payload["ecommerceId"] == payment["ecommerceId"]
    assert payload["dailyTransactionID"] == payment["dailyTransactionId"]
    assert {"transactionDate", "businessName", "isNonProfit", "referenceTransactionId"} <= set(
        payload
    )
    assert sandbox.webhook_payload(payment["ecommerceId"], total="99")["total"] == "99"

    sandbox.refund(payment["ecommerceId"], "2.00")
    refund_payload = sandbox.refund_webhook_payload(payment["ecommerceId"])
    assert refund_payload["transactionType"] == "refund"
    assert refund_payload["total"] == 2
    assert "ecommerceId" not in refund_payload
    assert refund_payload["referenceNumber"] == payment["referenceNumber"]

    open_one = create(sandbox)["ecommerceId"]
    sandbox.cancel(open_one)
    assert sandbox.webhook_payload(open_one)["status"] == "cancelled"
    late = create(sandbox)["ecommerceId"]
    sandbox.expire(late)
    assert sandbox.webhook_payload(late)["status"] == "expired"


def test_send_webhook_and_auto_webhooks(sandbox, listener):
    subscribe(sandbox, listener.url)
    payment = completed(sandbox)
    assert listener.received == []  # auto webhooks are off by default
    assert sandbox.send_webhook(sandbox.webhook_payload(payment["ecommerceId"])) == 204
    assert listener.received[-1]["ecommerceId"] == payment["ecommerceId"]

    sandbox.state.auto_webhooks = True
    other = create(sandbox)["ecommerceId"]
    sandbox.complete(other)  # in-process actions deliver before returning
    sandbox.refund(other, "1.00")
    assert [(hook["transactionType"], hook["status"]) for hook in listener.received[-2:]] == [
        ("ecommerce", "completed"),
        ("refund", "completed"),
    ]

    # Through the API the webhook goes out in the background, as ATH Móvil's does.
    listener.arrived.clear()
    third = create(sandbox)
    sandbox.confirm(third["ecommerceId"])
    authorize(sandbox, third["auth_token"])
    assert listener.arrived.wait(5)
    assert listener.received[-1]["ecommerceId"] == third["ecommerceId"]


def test_control_webhook_route(sandbox, listener):
    payment = completed(sandbox)
    response = requests.post(
        f"{sandbox.url}/sandbox/webhooks",
        json={
            "ecommerceId": payment["ecommerceId"],
            "status": "completed",
            "listenerURL": listener.url,
        },
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == 204
    assert listener.received[-1]["referenceNumber"] == payment["referenceNumber"]
    # No subscription and no URL: nothing to post to.
    response = requests.post(
        f"{sandbox.url}/sandbox/webhooks", json={"ecommerceId": payment["ecommerceId"]}, timeout=5
    )
    assert response.status_code == 409


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "status", "code"),
    [
        ("http500", {}, 500, "BTRA_9999"),
        ("http503", {}, 503, "BTRA_9998"),
        ("http429", {}, 429, "BTRA_9998"),
        ("btra9998", {}, 200, "BTRA_9998"),
        ("btra9998", {"status": 502}, 502, "BTRA_9998"),
        ("btra9999", {}, 500, "BTRA_9999"),
        ("auth", {}, 401, "BTRA_0401"),
    ],
)
def test_error_faults(sandbox, kind, options, status, code):
    ecommerce_id = create(sandbox)["ecommerceId"]
    sandbox.inject_fault(kind, "findPayment", **options)
    response = find(sandbox, ecommerce_id)
    assert_error(response, code, status)
    if kind == "http429":
        assert response.headers["Retry-After"] == "0"
    assert find(sandbox, ecommerce_id).status_code == 200  # one time only


def test_html_and_garbage_faults(sandbox):
    ecommerce_id = create(sandbox)["ecommerceId"]
    sandbox.inject_fault("html", "findPayment")
    response = find(sandbox, ecommerce_id)
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()
    sandbox.inject_fault("garbage")
    response = find(sandbox, ecommerce_id)
    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": "nope"}


def test_drop_and_timeout_faults_close_without_answer(sandbox):
    ecommerce_id = create(sandbox)["ecommerceId"]
    sandbox.inject_fault("drop", "findPayment")
    with pytest.raises(requests.ConnectionError):
        find(sandbox, ecommerce_id)
    sandbox.inject_fault("timeout", "findPayment", delay=0.05)
    with pytest.raises(requests.ConnectionError):
        find(sandbox, ecommerce_id)
    sandbox.inject_fault("timeout", "findPayment", delay=30)
    with pytest.raises(requests.Timeout):
        requests.post(
            f"{sandbox.url}{ECOM}/business/findPayment",
            json={"ecommerceId": ecommerce_id, "publicToken": PUBLIC},
            timeout=0.2,
        )
    assert sandbox.counts()["findPayment"] == 3


def test_lost_fault_carries_out_the_call_and_drops_its_answer(sandbox):
    ecommerce_id = create(sandbox)["ecommerceId"]
    sandbox.complete(ecommerce_id)
    reference = sandbox.payment(ecommerce_id)["referenceNumber"]
    sandbox.inject_fault("lost", "refund")
    body = {
        "publicToken": PUBLIC,
        "privateToken": "sandbox-private-token",
        "referenceNumber": reference,
        "amount": "1.00",
    }
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{sandbox.url}{ECOM}/refund", json=body, timeout=5)
    assert sandbox.payment(ecommerce_id)["totalRefundedAmount"] == "1.00"  # it went through
    assert sandbox.counts()["refund"] == 1


def test_latency_fault_then_normal_answer(sandbox):
    ecommerce_id = create(sandbox)["ecommerceId"]
    sandbox.inject_fault("latency", "findPayment", delay=0.05)
    response = find(sandbox, ecommerce_id)
    assert response.status_code == 200
    assert response.elapsed >= timedelta(seconds=0.05)


def test_faults_target_endpoints_and_times(sandbox):
    ecommerce_id = create(sandbox)["ecommerceId"]
    sandbox.inject_fault("http503", "refund", times=2)
    assert find(sandbox, ecommerce_id).status_code == 200
    sandbox.inject_fault("http500", times=2)
    assert find(sandbox, ecommerce_id).status_code == 500
    assert requests.post(f"{sandbox.url}{ECOM}/payment", json={}, timeout=5).status_code == 500
    assert find(sandbox, ecommerce_id).status_code == 200
    sandbox.clear_faults()
    assert sandbox.state.faults() == []
    with pytest.raises(ValueError):
        sandbox.inject_fault("meteor")
    with pytest.raises(ValueError):
        sandbox.inject_fault("drop", endpoint="nowhere")


def test_every_fault_kind_is_covered():
    covered = {"http500", "http503", "http429", "btra9998", "btra9999", "auth"}
    covered |= {"html", "garbage", "drop", "timeout", "latency", "lost"}
    assert covered == set(FAULT_KINDS)


def test_stop_releases_a_held_request_quickly(monkeypatch):
    server = SandboxServer().start()
    server.inject_fault("timeout", delay=60)
    held = threading.Event()
    take_fault = server.state.take_fault

    def take_and_tell(endpoint: str) -> Any:
        fault = take_fault(endpoint)
        held.set()
        return fault

    monkeypatch.setattr(server.state, "take_fault", take_and_tell)
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(
                requests.post(f"{server.url}{ECOM}/business/findPayment", json={}, timeout=10)
            )
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert held.wait(5)  # the request is now being held by the fault
    server.stop()
    thread.join(timeout=3)
    assert not thread.is_alive()
    assert isinstance(outcome[0], requests.ConnectionError)


def test_set_latency_applies_to_api_calls_only(sandbox):
    sandbox.set_latency(0.05)
    response = requests.get(f"{sandbox.url}/sandbox/clock", timeout=5)
    assert response.elapsed < timedelta(seconds=0.05)
    response = find(sandbox, "00000000-0000-4000-8000-000000000000")
    assert response.elapsed >= timedelta(seconds=0.05)


# -- counts and keep-alive ------------------------------------------------------------------------


def test_request_counts(sandbox):
    data = create(sandbox)
    find(sandbox, data["ecommerceId"])
    sandbox.inject_fault("http500", "findPayment")
    find(sandbox, data["ecommerceId"])
    requests.get(f"{sandbox.url}/sandbox/clock", timeout=5)  # control calls are not counted
    counts = sandbox.counts()
    assert counts["payment"] == 1 and counts["findPayment"] == 2
    assert set(counts) == {
        "payment",
        "findPayment",
        "updatePhoneNumber",
        "authorization",
        "cancel",
        "refund",
        "transactionReport",
        "webhookSubscribe",
    }
    sandbox.reset_counts()
    assert set(sandbox.counts().values()) == {0}


def test_keep_alive_uses_one_connection(sandbox):
    ecommerce_id = create(sandbox)["ecommerceId"]
    sandbox.reset_counts()
    with requests.Session() as session:
        body = {"ecommerceId": ecommerce_id, "publicToken": PUBLIC}
        for _ in range(50):
            response = session.post(
                f"{sandbox.url}{ECOM}/business/findPayment", json=body, timeout=5
            )
            assert response.status_code == 200
            assert response.headers["Content-Length"] == str(len(response.content))
    assert sandbox.connections() == 1
    assert sandbox.counts()["findPayment"] == 50


def test_handler_disables_nagle():
    from athm_sync.sandbox.server import _Handler

    assert _Handler.disable_nagle_algorithm is True
    assert _Handler.protocol_version == "HTTP/1.1"


# -- the control API -------------------------------------------------------------------------------


def control(sandbox: SandboxServer, method: str, path: str, **body: Any) -> requests.Response:
    return requests.request(method, f"{sandbox.url}/sandbox{path}", json=body or None, timeout=5)


def test_control_api_drives_a_payment(sandbox):
    response = control(sandbox, "POST", "/payments", total="12.00", timeout=300)
    assert response.status_code == 201
    ecommerce_id = response.json()["ecommerceId"]
    confirmed = control(sandbox, "POST", f"/payments/{ecommerce_id}/confirm", name="Luis").json()
    assert confirmed["status"] == "CONFIRM" and confirmed["customer"]["name"] == "Luis"
    assert control(sandbox, "POST", f"/payments/{ecommerce_id}/capture").json()["status"] == (
        "COMPLETED"
    )
    refunded = control(sandbox, "POST", f"/payments/{ecommerce_id}/refund", amount="1.00")
    assert refunded.json()["totalRefundedAmount"] == "1.00"
    state = control(sandbox, "GET", f"/payments/{ecommerce_id}").json()
    assert state["fee"] == "0.40" and state["netAmount"] == "11.60"
    assert len(control(sandbox, "GET", "/payments").json()) == 1


def test_control_api_errors(sandbox):
    missing = "00000000-0000-4000-8000-000000000000"
    response = control(sandbox, "POST", f"/payments/{missing}/confirm")
    assert response.status_code == 404 and "error" in response.json()
    assert control(sandbox, "GET", f"/payments/{missing}").status_code == 404
    ecommerce_id = control(sandbox, "POST", "/payments", total="5").json()["ecommerceId"]
    assert control(sandbox, "POST", f"/payments/{ecommerce_id}/capture").status_code == 409
    assert control(sandbox, "POST", f"/payments/{ecommerce_id}/refund", amount="1").status_code == (
        409
    )
    assert control(sandbox, "POST", f"/payments/{ecommerce_id}/complete").status_code == 200
    assert control(sandbox, "POST", f"/payments/{ecommerce_id}/cancel").status_code == 409
    assert control(sandbox, "POST", f"/payments/{ecommerce_id}/expire").status_code == 409
    assert control(sandbox, "GET", "/nothing").status_code == 404
    assert control(sandbox, "POST", "/faults", kind="meteor").status_code == 400


def test_control_api_clock_faults_requests_reset(sandbox):
    before = control(sandbox, "GET", "/clock").json()
    after = control(sandbox, "POST", "/clock/advance", seconds=3600).json()
    assert after["offset"] == before["offset"] + 3600
    assert DATE_RE.match(after["local"])

    assert control(
        sandbox, "POST", "/faults", kind="http503", endpoint="payment", times=2
    ).status_code == (201)
    assert control(sandbox, "GET", "/faults").json()[0]["times"] == 2
    assert requests.post(f"{sandbox.url}{ECOM}/payment", json={}, timeout=5).status_code == 503
    assert control(sandbox, "GET", "/requests").json()["payment"] == 1
    assert control(sandbox, "DELETE", "/faults").json() == []
    assert control(sandbox, "DELETE", "/requests").json()["payment"] == 0

    control(sandbox, "POST", "/payments", total="5")
    assert control(sandbox, "POST", "/reset").status_code == 200
    assert control(sandbox, "GET", "/payments").json() == []
    assert control(sandbox, "GET", "/clock").json()["offset"] == 0


def test_reset_forgets_everything(sandbox, listener):
    subscribe(sandbox, listener.url)
    create(sandbox)
    sandbox.advance(10)
    sandbox.inject_fault("drop")
    sandbox.reset()
    assert sandbox.state.payment_ids() == []
    assert sandbox.state.faults() == []
    assert sandbox.state.subscription is None
    assert set(sandbox.counts().values()) == {0}
    assert sandbox.state.clock()["offset"] == 0


# -- the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["--port", "70000"], ["--port", "abc"], ["--latency-ms", "-5"], ["--bogus"]],
)
def test_cli_bad_arguments(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "Traceback" not in captured.err


def test_cli_port_in_use(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot listen" in err


def test_advancing_the_clock_posts_expiry_webhooks(sandbox, listener):
    subscribe(sandbox, listener.url)
    sandbox.state.auto_webhooks = True
    ecommerce_id = create(sandbox, timeout=120)["ecommerceId"]
    sandbox.advance(120)
    assert listener.received[-1]["status"] == "expired"
    assert listener.received[-1]["ecommerceId"] == ecommerce_id
    assert listener.received[-1]["referenceNumber"] == ""


def test_webhooks_respect_subscription_flags(sandbox, listener):
    subscribe(sandbox, listener.url, ecommercePaymentCancelledEvent=False)
    sandbox.state.auto_webhooks = True
    sandbox.cancel(create(sandbox)["ecommerceId"])
    assert listener.received == []


def test_misroute_answers_find_payment_with_another_payments_data(sandbox):
    asked, _ = sandbox.create_payment("100.00")
    other, _ = sandbox.create_payment("1.00")
    sandbox.complete(other)
    body = {"ecommerceId": asked, "publicToken": "sandbox-public-token"}

    answered = control(sandbox, "POST", f"/payments/{asked}/misroute", answerWith=other).json()
    found = requests.post(f"{sandbox.url}{ECOM}/business/findPayment", json=body, timeout=5)

    assert answered == found.json()["data"]
    assert (answered["ecommerceId"], answered["total"]) == (other, 1)
    assert answered["ecommerceStatus"] == "COMPLETED"
    assert sandbox.payment(asked)["status"] == "OPEN"  # the ledger itself is untouched
    sandbox.misroute(asked, None)
    assert sandbox.state.payment_data(asked)["ecommerceId"] == asked
    missing = "00000000-0000-4000-8000-000000000000"
    response = control(sandbox, "POST", f"/payments/{asked}/misroute", answerWith=missing)
    assert response.status_code == 404
    assert control(sandbox, "POST", f"/payments/{missing}/misroute").status_code == 404


def test_tamper_replaces_fields_of_find_payments_answer_until_undone(sandbox):
    ecommerce_id, _ = sandbox.create_payment("10.00")
    long_reference = "\x00" + "9" * 299

    tampered = control(
        sandbox,
        "POST",
        f"/payments/{ecommerce_id}/tamper",
        fields={"referenceNumber": long_reference},
    ).json()

    assert tampered["referenceNumber"] == long_reference and tampered["total"] == 10
    sandbox.tamper(ecommerce_id, total=-5)
    assert sandbox.state.payment_data(ecommerce_id)["total"] == -5
    assert sandbox.state.payment_data(ecommerce_id)["referenceNumber"] == ""  # replaced, not merged
    sandbox.tamper(ecommerce_id)
    assert sandbox.state.payment_data(ecommerce_id)["total"] == 10
    sandbox.reset()
    assert control(sandbox, "POST", f"/payments/{ecommerce_id}/tamper").status_code == 404


# -- the documented webhook shape ------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "cancelled", "expired"])
def test_the_documented_shape_is_evertecs_sample_without_an_ecommerce_id(sandbox, status):
    payment = completed(sandbox, "3.00") if status == "completed" else create(sandbox, total="3")
    if status != "completed":
        getattr(sandbox, {"cancelled": "cancel", "expired": "expire"}[status])(
            payment["ecommerceId"]
        )
    captured = sandbox.webhook_payload(payment["ecommerceId"])
    assert captured["ecommerceId"] == payment["ecommerceId"]  # the default: as captured

    sandbox.state.webhook_shape = "documented"
    body = sandbox.webhook_payload(payment["ecommerceId"])

    reference = documented.sample(f"ecommerce_{status}")
    assert list(body) == list(reference)  # the documented fields, in the documented order
    assert body["status"] == status
    assert all(isinstance(body[key], str) for key in ("total", "fee", "netAmount", "phoneNumber"))
    assert (body["total"], body["tax"], body["totalRefundedAmount"]) == ("3.00", "0.00", "0.00")
    if status != "completed":
        assert (body["name"], body["phoneNumber"], body["referenceNumber"]) == ("", "", "")


def test_the_webhook_shape_is_chosen_over_the_control_api_and_reset(sandbox):
    assert control(sandbox, "GET", "/webhooks").json()["shape"] == "captured"
    response = control(sandbox, "POST", "/webhooks/shape", shape="documented")
    assert response.status_code == 200 and response.json() == {"shape": "documented"}
    assert sandbox.state.webhook_shape == "documented"
    wrong = control(sandbox, "POST", "/webhooks/shape", shape="signed")
    assert wrong.status_code == 400 and "captured, documented" in wrong.json()["error"]
    sandbox.reset()
    assert sandbox.state.webhook_shape == "captured"
