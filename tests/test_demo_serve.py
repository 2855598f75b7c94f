"""``scripts/demo --serve`` as the real process a person starts: it prints the shop's URLs and
the sandbox's phone page, serves the checkout (an order's form, the app's waiting page and
script, Evertec's button with the sandbox's stand-in for its script), and stops cleanly on a
signal, removing its throwaway project. The person is played over HTTP: approving on the
sandbox's phone page is that page's own form, and the button's library and ``button.js`` are
played by the requests they make."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from html import unescape
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture
def demo():
    """``scripts/demo.py --serve --port 0`` running; yields (process, its stdout lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "ATHM_"))}
    process = subprocess.Popen(  # noqa: S603 - our own script
        [sys.executable, str(DEMO), "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def read_until(lines: queue.Queue, words: str) -> list[str]:
    seen = []
    while True:
        line = lines.get(timeout=60)  # the next line, or a failure: never a fixed pause
        seen.append(line)
        if words in line:
            return seen


def post(session: requests.Session, url: str, page: str, **data: str) -> requests.Response:
    token = CSRF.search(page).group(1)
    return session.post(url, data={"csrfmiddlewaretoken": token, **data}, headers={"Referer": url})


def printed_urls(lines: queue.Queue) -> dict[str, str]:
    """What the demo prints before it waits: the shop, the phone page and the project folder."""
    printed = "".join(read_until(lines, "The customer's phone:"))
    return {
        "shop": re.search(r"The shop:\s+(http://127\.0\.0\.1:\d+)/", printed).group(1),
        "phone": re.search(
            r"The customer's phone:\s+(http://127\.0\.0\.1:\d+/phone/)", printed
        ).group(1),
        "folder": re.search(r"project:\s+(\S+)", printed).group(1),
    }


def approve_on_the_phone(phone_index: str, total: str) -> None:
    """The customer opens the sandbox's phone page from its index and taps Approve on the
    request for ``total`` (the page's own form)."""
    sandbox = phone_index.removesuffix("/phone/")
    index = requests.get(phone_index, timeout=10).text
    number = re.search(r'href="(/phone/\d+/)"', index).group(1)
    page = requests.get(sandbox + number, timeout=10).text
    request = next(card for card in page.split('<div class="push">') if f"${total}<" in card)
    approve = re.search(r'action="(/phone/\d+/[0-9a-f-]+/approve)"', request).group(1)
    answer = requests.post(sandbox + approve, allow_redirects=False, timeout=10)
    assert answer.status_code == 303


def json_in(page: str, element_id: str) -> dict:
    found = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page)
    assert found, f"no {element_id} in the page"
    return json.loads(found.group(1))


def settle(session: requests.Session, status_url: str) -> dict:
    """Poll the waiting page's status as its script does, until it is no longer waiting (it
    asks ATH Móvil at most once per 2 s)."""
    answers = (session.get(status_url).json() for _ in range(5000))
    return next(answer for answer in answers if answer["state"] != "waiting")


def test_serve_runs_the_checkout_for_a_person_and_stops_on_a_signal(demo):
    process, lines = demo
    urls = printed_urls(lines)
    shop = urls["shop"]
    session = requests.Session()
    assert urls["phone"] in unescape(session.get(f"{shop}/").text)  # the home page links it

    order = session.get(f"{shop}/orders/order-1/").text
    waiting = post(session, f"{shop}/orders/order-1/pay/", order, phone_number="787 555 0142")
    assert "/athm/checkout/" in waiting.url and "$12.50" in waiting.text
    assert session.get(f"{shop}/static/athm_sync/checkout.js").status_code == 200
    status_url = shop + re.search(r'data-status-url="([^"]+)"', waiting.text).group(1)
    approve_on_the_phone(urls["phone"], "12.50")

    settled = settle(session, status_url)
    assert settled["state"] == "completed" and settled["next"] == "/orders/order-1/paid/"
    assert "order-1: paid" in session.get(f"{shop}/orders/order-1/paid/").text
    read_until(lines, "payment_completed  order-1")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert not Path(urls["folder"]).exists()


def test_serve_offers_evertecs_button_for_the_servers_total_and_its_payment_completes(demo):
    process, lines = demo
    urls = printed_urls(lines)
    shop, sandbox = urls["shop"], urls["phone"].removesuffix("/phone/")
    session = requests.Session()

    page = session.get(f"{shop}/orders/order-3/").text
    config = json_in(page, "athm-checkout-config")
    callback = json_in(page, "athm-checkout-callback")
    assert (config["total"], config["metadata1"]) == (149.99, "order-3")  # the server's
    assert CSRF.search(page)  # and the phone form beside it
    script = f"{sandbox}/api/modal/js/athmovil_base.js"
    assert f'<script src="{script}"></script>' in page
    assert session.get(script).status_code == 200
    assert session.get(f"{shop}/static/athm_sync/button.js").status_code == 200

    # Pressed: the stand-in creates the payment from the page's config, the customer approves
    # on the phone, the library captures it, and button.js posts it with the signed order.
    api = f"{sandbox}/api/business-transaction/ecommerce"
    created = requests.post(f"{api}/payment", json=config, timeout=10).json()["data"]
    approve_on_the_phone(urls["phone"], "149.99")
    bearer = {"Authorization": f"Bearer {created['auth_token']}"}
    assert requests.post(f"{api}/authorization", json={}, headers=bearer, timeout=10).ok
    answer = session.post(
        shop + callback["url"],
        data={
            "event": "authorization",
            "signed": callback["signed"],
            "ecommerceId": created["ecommerceId"],
            "auth_token": created["auth_token"],
        },
        headers={"Accept": "application/json", "X-CSRFToken": callback["csrf_token"]},
    )
    assert answer.status_code == 200, answer.text

    paid = session.get(shop + answer.json()["next"])  # the waiting page: already paid
    assert paid.url == f"{shop}/orders/order-3/paid/" and "order-3: paid" in paid.text
    read_until(lines, "payment_completed  order-3")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_the_sandboxs_expire_over_http_is_an_expiry_in_the_served_shop(demo):
    process, lines = demo
    urls = printed_urls(lines)
    shop, sandbox = urls["shop"], urls["phone"].removesuffix("/phone/")
    session = requests.Session()

    order = session.get(f"{shop}/orders/order-2/").text
    waiting = post(session, f"{shop}/orders/order-2/pay/", order, phone_number="787 555 0142")
    status_url = shop + re.search(r'data-status-url="([^"]+)"', waiting.text).group(1)
    assert session.get(status_url).json()["seconds_left"] > 100  # a 120 s payment, just made
    payments = requests.get(f"{sandbox}/sandbox/payments", timeout=10).json()
    ecommerce_id = next(p["ecommerceId"] for p in payments if p["metadata1"] == "order-2")

    # As the demo tells a person to, with curl: no time moved, no wait for the timeout.
    expired = requests.post(f"{sandbox}/sandbox/payments/{ecommerce_id}/expire", timeout=10)
    assert expired.status_code == 200

    # An expiry, not a cancellation: the shop's own deadline passed with the sandbox's.
    assert settle(session, status_url)["state"] == "expired"
    read_until(lines, "payment_expired    order-2")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
