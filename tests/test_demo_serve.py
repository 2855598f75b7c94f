"""``scripts/demo --serve`` as the real process a person starts: it prints the shop's URLs,
serves the checkout (an order's form, the app's waiting page and script, the sandbox phone
page), and stops cleanly on a signal, removing its throwaway project."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
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


def test_serve_runs_the_checkout_for_a_person_and_stops_on_a_signal(demo):
    process, lines = demo
    printed = read_until(lines, "The customer's phone:")
    shop = re.search(r"The shop:\s+(http://127\.0\.0\.1:\d+)/", "".join(printed)).group(1)
    folder = re.search(r"project:\s+(\S+)", "".join(printed)).group(1)
    session = requests.Session()

    order = session.get(f"{shop}/orders/order-1/").text
    waiting = post(session, f"{shop}/orders/order-1/pay/", order, phone_number="787 555 0142")
    assert "/athm/checkout/" in waiting.url and "$12.50" in waiting.text
    assert session.get(f"{shop}/static/athm_sync/checkout.js").status_code == 200
    status_url = shop + re.search(r'data-status-url="([^"]+)"', waiting.text).group(1)
    phone = session.get(f"{shop}/phone/").text
    approve = re.search(r'action="(/phone/[0-9a-f-]+/approve/)"', phone).group(1)
    post(session, shop + approve, phone)

    # The page asks ATH Móvil at most once per 2 s: poll as its script does, until it has.
    answers = (session.get(status_url).json() for _ in range(5000))
    settled = next(answer for answer in answers if answer["state"] != "waiting")
    assert settled["state"] == "completed" and settled["next"] == "/orders/order-1/paid/"
    assert "order-1: paid" in session.get(f"{shop}/orders/order-1/paid/").text
    read_until(lines, "payment_completed  order-1")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert not Path(folder).exists()
