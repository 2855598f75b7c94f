"""The sandbox plays the customer's phone: its ``/phone/`` pages list the payment requests each
number received and approve or decline them, and its stand-in for Evertec's ``athmovil_base.js``
runs the JavaScript button against the sandbox (under Node, with a stand-in page and clock:
``tests/js/run_button_script.js``; the real browser runs are in the browser tests).

Everything goes over HTTP to the real sandbox on loopback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from django.test import Client

from athm_sync.checkout import flow, start
from athm_sync.checkout.models import Checkout
from athm_sync.models import Payment
from athm_sync.sandbox import SandboxServer

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "js" / "run_button_script.js"
NODE = shutil.which("node")
PHONE = "7875550142"
OTHER = "7875550199"


def phone_page(sandbox: SandboxServer, digits: str) -> requests.Response:
    return requests.get(f"{sandbox.url}/phone/{digits}/", timeout=10)


def tap(sandbox: SandboxServer, digits: str, ecommerce_id: str, action: str) -> requests.Response:
    url = f"{sandbox.url}/phone/{digits}/{ecommerce_id}/{action}"
    return requests.post(url, allow_redirects=False, timeout=10)


def moved(sandbox: SandboxServer, ecommerce_id: str, auth_token: str, phone: str) -> None:
    """The shop's updatePhoneNumber call, as the API takes it."""
    response = requests.put(
        f"{sandbox.url}/api/business-transaction/ecommerce/business/updatePhoneNumber",
        json={"ecommerceId": ecommerce_id, "phoneNumber": phone},
        headers={"Authorization": f"Bearer {auth_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


# -- the phone page --------------------------------------------------------------------------


def test_the_phone_page_lists_the_requests_created_for_it_and_moved_to_it_and_no_others(sandbox):
    mine, _ = sandbox.create_payment("12.50", phone_number=PHONE, items=[{"name": "Café"}])
    other, token = sandbox.create_payment("30.00", phone_number=OTHER)
    moved(sandbox, other, token, "(787) 555-0142")
    stranger, _ = sandbox.create_payment("99.00", phone_number="7875550100")

    page = phone_page(sandbox, PHONE)

    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    assert mine in html and other in html and stranger not in html
    assert "$12.50" in html and "$30.00" in html and "Café" in html and "Sandbox Shop" in html
    assert f'action="/phone/{PHONE}/{mine}/approve"' in html
    assert f'action="/phone/{PHONE}/{other}/decline"' in html
    assert re.search(r"Time left: (10:00|9:[0-5]\d)<", html)  # of the 600 s timeout
    listed = [push["ecommerceId"] for push in sandbox.pushes(PHONE)]
    assert listed == [other, mine]  # newest first
    as_json = requests.get(f"{sandbox.url}/sandbox/pushes", params={"phone": PHONE}, timeout=10)
    assert [push["ecommerceId"] for push in as_json.json()] == listed
    # The number it left still shows it, without buttons: only the phone it went to can act.
    old = phone_page(sandbox, OTHER).text
    assert other in old and "Sent to another phone since." in old
    assert f"/{other}/approve" not in old
    index = requests.get(f"{sandbox.url}/phone/", timeout=10).text
    assert f'href="/phone/{PHONE}/"' in index and f'href="/phone/{OTHER}/"' in index


def test_approve_confirms_and_decline_cancels_then_redirect_back(sandbox):
    approved, _ = sandbox.create_payment("12.50", phone_number=PHONE)
    declined, _ = sandbox.create_payment("8.00", phone_number=PHONE)

    first = tap(sandbox, PHONE, approved, "approve")
    second = tap(sandbox, PHONE, declined, "decline")

    assert first.status_code == 303 and first.headers["Location"] == f"/phone/{PHONE}/"
    assert second.status_code == 303
    assert sandbox.payment(approved)["status"] == "CONFIRM"
    assert sandbox.payment(approved)["customer"]["phone"] == "(787) 555-0142"
    assert sandbox.payment(declined)["status"] == "CANCEL"
    assert sandbox.payment(declined)["cancelReason"] == "cancelled"
    html = phone_page(sandbox, PHONE).text
    assert "Approved: waiting for the business" in html and "Cancelled." in html
    assert "/approve" not in html  # nothing left to act on


def test_a_tap_on_a_request_no_longer_open_says_so_and_changes_nothing(sandbox):
    ecommerce_id, _ = sandbox.create_payment("12.50", phone_number=PHONE)
    sandbox.complete(ecommerce_id)
    before = sandbox.payment(ecommerce_id)

    answer = tap(sandbox, PHONE, ecommerce_id, "decline")

    assert answer.status_code == 409
    assert "no longer waiting for you: Paid. Nothing changed." in answer.text
    assert sandbox.payment(ecommerce_id) == before


def test_the_phone_it_was_moved_away_from_cannot_approve_it(sandbox):
    ecommerce_id, token = sandbox.create_payment("12.50", phone_number=OTHER)
    moved(sandbox, ecommerce_id, token, PHONE)

    answer = tap(sandbox, OTHER, ecommerce_id, "approve")

    assert answer.status_code == 409 and "sent to another phone" in answer.text
    assert sandbox.payment(ecommerce_id)["status"] == "OPEN"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/phone/7875550000/"),  # a number that received nothing
        ("GET", "/phone/787-555-0142/"),  # not digits
        ("GET", "/phone/%3Cscript%3E/"),
        ("POST", "/phone/7875550142/00000000-0000-0000-0000-000000000000/approve"),
        ("POST", "/phone/7875550142/{other}/approve"),  # another phone's request
        ("POST", "/phone/7875550142/{mine}/pay"),
        ("GET", "/phone/7875550142/{mine}/approve/more"),
    ],
)
def test_a_bad_number_or_id_gets_a_404_page_and_nothing_changes(sandbox, method, path):
    mine, _ = sandbox.create_payment("12.50", phone_number=PHONE)
    other, _ = sandbox.create_payment("12.50", phone_number=OTHER)

    answer = requests.request(method, sandbox.url + path.format(mine=mine, other=other), timeout=10)

    assert answer.status_code == 404
    assert answer.headers["Content-Type"].startswith("text/html") and "Not found" in answer.text
    assert {sandbox.payment(eid)["status"] for eid in (mine, other)} == {"OPEN"}


def test_a_get_on_approve_is_refused_and_changes_nothing(sandbox):
    ecommerce_id, _ = sandbox.create_payment("12.50", phone_number=PHONE)

    answer = requests.get(f"{sandbox.url}/phone/{PHONE}/{ecommerce_id}/approve", timeout=10)

    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"
    assert sandbox.payment(ecommerce_id)["status"] == "OPEN"


def test_pushes_json_refuses_a_phone_that_is_not_a_number(sandbox):
    answer = requests.get(f"{sandbox.url}/sandbox/pushes", params={"phone": "abc"}, timeout=10)

    assert answer.status_code == 400 and "digits" in answer.json()["error"]


# -- with the shop's checkout ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_approved_on_the_phone_page_the_checkouts_poll_captures_it_once(
    rf, athm_customer, athm_signals
):
    start(
        rf.post("/orders/7/pay/"),
        total="12.50",
        metadata_1="order-7",
        phone_number="787-555-0142",
        success_url="/orders/7/paid/",
    )
    checkout = Checkout.objects.select_related("payment").get()
    ecommerce_id = str(checkout.payment.pk)
    assert [push["ecommerceId"] for push in athm_customer.sandbox.pushes(PHONE)] == [ecommerce_id]

    seen = athm_customer.approve_on_phone(PHONE, ecommerce_id)
    assert seen["status"] == "CONFIRM"
    page = Client().get(flow.wait_url(checkout))

    assert page.status_code == 303 and page["Location"] == "/orders/7/paid/"
    assert Payment.objects.get().status == Payment.Status.COMPLETED
    assert athm_customer.sandbox.counts()["authorization"] == 1
    assert athm_signals.names == ["payment_completed"]


@pytest.mark.django_db(transaction=True)
def test_declined_on_the_phone_page_the_checkout_learns_it_is_cancelled(
    rf, athm_customer, athm_signals
):
    start(
        rf.post("/orders/7/pay/"),
        total="12.50",
        metadata_1="order-7",
        phone_number=PHONE,
        success_url="/orders/7/paid/",
        cancel_url="/orders/7/",
    )
    checkout = Checkout.objects.select_related("payment").get()

    athm_customer.decline_on_phone(PHONE, str(checkout.payment.pk))
    page = Client().get(flow.wait_url(checkout))

    assert page.status_code == 303 and page["Location"] == "/orders/7/"
    assert Payment.objects.get().status == Payment.Status.CANCEL
    assert athm_signals.names == ["payment_cancelled"]


def test_athm_settings_points_the_button_script_at_the_sandbox(athm_settings, settings):
    from athm_sync.conf import get_settings

    url = get_settings().checkout_button_script_url
    assert url == f"{athm_settings.url}/api/modal/js/athmovil_base.js"
    assert requests.get(url, timeout=10).status_code == 200


@pytest.mark.parametrize("value", ["", "payments.athmovil.com/athmovil_base.js", 7, "ftp://x/y.js"])
def test_a_button_script_url_that_is_not_a_url_is_refused_in_one_line(settings, value):
    from django.core.exceptions import ImproperlyConfigured

    from athm_sync.conf import get_settings

    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "CHECKOUT_BUTTON_SCRIPT_URL": value}

    with pytest.raises(ImproperlyConfigured) as refused:
        get_settings()

    message = str(refused.value)
    assert "\n" not in message
    assert "ATHM_SYNC['CHECKOUT_BUTTON_SCRIPT_URL'] must be an http(s) URL" in message
    assert "http://127.0.0.1:8765/api/modal/js/athmovil_base.js" in message


def test_the_button_script_defaults_to_evertecs_and_plain_http_elsewhere_is_warned(settings):
    from athm_sync.conf import find_problems, get_settings

    assert get_settings().checkout_button_script_url == (
        "https://payments.athmovil.com/api/modal/js/athmovil_base.js"
    )
    raw = {**settings.ATHM_SYNC, "CHECKOUT_BUTTON_SCRIPT_URL": "http://shop.example/b.js"}
    assert [p.check_id for p in find_problems(raw)] == ["athm_sync.W002"]


# -- the button script stand-in ---------------------------------------------------------------


def button_config(sandbox: SandboxServer, **changes) -> dict:
    return {
        "publicToken": sandbox.state.public_token,
        "timeout": 120,
        "theme": "btn-dark",
        "lang": "en",
        "total": "12.50",
        "subtotal": "12.00",
        "tax": "0.50",
        "metadata1": "order-7",
        "metadata2": "",
        "items": [{"name": "Café", "quantity": 1, "price": "12.00"}],
        "phoneNumber": "787-555-0142",
        **changes,
    }


def run_button(sandbox: SandboxServer, plan: str, milliseconds: int = 20_000, **config) -> dict:
    config_json = json.dumps(button_config(sandbox, **config))
    result = subprocess.run(  # noqa: S603 - our own runner
        [NODE, str(RUNNER), sandbox.url, config_json, plan, str(milliseconds)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def endpoints(seen: dict) -> list[str]:
    return [call["path"].rsplit("/", 1)[-1] for call in seen["calls"]]


needs_node = pytest.mark.skipif(NODE is None, reason="needs Node.js")


@needs_node
def test_the_button_creates_the_payment_then_captures_it_once_approved_on_the_phone(sandbox):
    seen = run_button(sandbox, "approve")

    assert seen["contentType"].startswith("text/javascript") and seen["cors"] == "*"
    assert seen["button"] == {"className": "athmovil-button btn-dark", "text": "Pay with ATH Móvil"}
    assert endpoints(seen) == ["payment", "findPayment", "findPayment", "authorization"]
    assert [call["bearer"] for call in seen["calls"]] == [False, False, False, True]
    assert seen["acted"] == 303  # the phone page's approve
    assert [callback["name"] for callback in seen["callbacks"]] == ["authorizationATHM"]
    record = seen["authorizationATHM"]  # what authorization() gave the page's callback
    ecommerce_id = record["ecommerceId"]
    paid = sandbox.payment(ecommerce_id)
    assert paid["status"] == "COMPLETED" and record["ecommerceStatus"] == "COMPLETED"
    assert record["referenceNumber"] == paid["referenceNumber"] != ""
    assert record["auth_token"] == paid["authToken"] and record["total"] == 12.5
    assert (paid["total"], paid["subtotal"], paid["tax"]) == ("12.50", "12.00", "0.50")
    assert paid["metadata1"] == "order-7" and paid["phoneNumber"] == "787-555-0142"
    assert sandbox.counts()["authorization"] == 1
    assert seen["modals"][0]["message"] == (
        "Open ATH Móvil on your phone and confirm the payment of $12.50"
    )
    assert seen["modals"][0]["link"] == f"{sandbox.url}/phone/{PHONE}/"
    assert not seen["modalOpen"] and seen["pendingTimers"] == 0  # it stopped polling


@needs_node
def test_declined_on_the_phone_the_button_calls_cancel_athm(sandbox):
    seen = run_button(sandbox, "decline")

    assert [callback["name"] for callback in seen["callbacks"]] == ["cancelATHM"]
    found = seen["cancelATHM"]  # what findPaymentATHM() gave the page's callback
    assert found["ecommerceStatus"] == "CANCEL"
    assert sandbox.payment(found["ecommerceId"])["cancelReason"] == "cancelled"
    assert "authorization" not in endpoints(seen)
    assert seen["pendingTimers"] == 0


@needs_node
def test_the_modals_cancel_button_cancels_with_the_sandbox_and_calls_cancel_athm(sandbox):
    seen = run_button(sandbox, "modal-cancel")

    assert endpoints(seen)[:3] == ["payment", "findPayment", "cancel"]
    assert [callback["name"] for callback in seen["callbacks"]] == ["cancelATHM"]
    assert sandbox.payment(seen["cancelATHM"]["ecommerceId"])["status"] == "CANCEL"


@needs_node
def test_past_the_timeout_the_button_calls_expired_athm_once(sandbox):
    seen = run_button(sandbox, "expire", milliseconds=150_000, timeout=120)

    assert [callback["name"] for callback in seen["callbacks"]] == ["expiredATHM"]
    assert seen["callbacks"][0]["at"] == 120_000
    found = seen["expiredATHM"]
    assert found["ecommerceStatus"] == "CANCEL"
    assert sandbox.payment(found["ecommerceId"])["cancelReason"] == "expired"
    assert seen["pendingTimers"] == 0 and not seen["modalOpen"]


@needs_node
def test_a_second_click_while_one_payment_waits_creates_no_second_payment(sandbox):
    seen = run_button(sandbox, "double-click", milliseconds=5_000)

    assert endpoints(seen).count("payment") == 1
    assert len(sandbox.state.payment_ids()) == 1


@needs_node
def test_the_button_speaks_spanish_when_lang_is_es(sandbox):
    seen = run_button(sandbox, "approve", lang="es", theme="btn-light")

    assert seen["button"]["className"] == "athmovil-button btn-light"
    assert seen["button"]["text"] == "Paga con ATH Móvil"
    assert seen["modals"][0]["message"].startswith("Abre ATH Móvil en tu teléfono")


# -- CORS ---------------------------------------------------------------------------------------


def test_the_api_answers_a_browsers_preflight_and_its_calls_from_another_origin(sandbox):
    url = f"{sandbox.url}/api/business-transaction/ecommerce/payment"
    origin = {"Origin": "http://127.0.0.1:8000"}

    preflight = requests.options(
        url,
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    created = requests.post(
        url,
        json={"publicToken": sandbox.state.public_token, "total": "5.00"},
        headers=origin,
        timeout=10,
    )

    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert created.status_code == 200 and created.headers["Access-Control-Allow-Origin"] == "*"
    assert sandbox.counts()["payment"] == 1  # the preflight is not a call


def test_the_control_api_and_the_phone_pages_send_no_cors_headers(sandbox):
    for path in ("/sandbox/payments", "/phone/"):
        answer = requests.get(sandbox.url + path, timeout=10)
        assert "Access-Control-Allow-Origin" not in answer.headers
    assert requests.options(sandbox.url + "/sandbox/reset", timeout=10).status_code != 204
