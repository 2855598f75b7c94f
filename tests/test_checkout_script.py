"""The waiting page's script (``athm_sync/static/athm_sync/checkout.js``) run by Node against a
stand-in page, ``fetch`` and clock (``tests/js/run_checkout_script.js``): what it asks, what it
shows and where it sends the customer. The real browser runs come with the JavaScript button."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "athm_sync" / "static" / "athm_sync" / "checkout.js"
RUNNER = ROOT / "tests" / "js" / "run_checkout_script.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js")

WAITING = {
    "state": "waiting",
    "message": "Open ATH Móvil on your phone and confirm the payment.",
    "seconds_left": 121,
    "next": None,
    "notice": "",
    "retry_after": 2.0,
}


def run(answers: list, milliseconds: int) -> dict:
    result = subprocess.run(  # noqa: S603 - our own runner
        [NODE, str(RUNNER), str(SCRIPT), json.dumps(answers), str(milliseconds)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)


def ok(**changes) -> dict:
    return {"status": 200, "body": {**WAITING, **changes}}


def test_it_polls_every_two_seconds_and_goes_where_the_answer_says():
    seen = run([ok(), ok(), ok(state="completed", next="/orders/7/paid/")], 20_000)

    assert [f["at"] for f in seen["fetches"]] == [2000, 4000, 6000]
    assert {f["url"] for f in seen["fetches"]} == {"/athm/checkout/1/token/status/"}
    assert seen["fetches"][0]["accept"] == "application/json"
    assert seen["went"] == ["/orders/7/paid/"]


def test_it_counts_down_to_the_deadline_the_server_gives():
    seen = run([ok(seconds_left=61)], 2_500)

    assert seen["countdowns"][0] == "2:05"  # from the page, before any answer
    assert seen["countdown"] == "1:01"  # the answer at 2 s moved the deadline


def test_it_shows_the_servers_message_and_notice():
    seen = run([ok(message="Confirmaste el pago.", notice="Seguimos esperando.")], 3_000)

    assert seen["message"] == "Confirmaste el pago."
    assert seen["notice"] == "Seguimos esperando."


def test_a_lost_connection_says_so_backs_off_and_recovers():
    seen = run(["network error", "network error", ok()], 15_000)

    assert [f["at"] for f in seen["fetches"]] == [2000, 6000, 14000]
    assert seen["notice"] is None  # the answer after it cleared the notice
    lost = run(["network error"], 3_000)
    assert lost["notice"] == "Connection lost"


def test_a_token_the_server_no_longer_knows_reloads_the_page():
    seen = run([{"status": 404, "body": {"error": "not found"}}], 10_000)

    assert seen["went"] == ["(reload)"]
    assert len(seen["fetches"]) == 1


def test_a_checkout_that_never_started_stops_polling():
    seen = run([ok(state="failed", message="The payment could not be started.")], 30_000)

    assert len(seen["fetches"]) == 1
    assert seen["message"] == "The payment could not be started."
    assert seen["went"] == []
