"""Every call's whole answer has a deadline: against loopback servers that drip or stall.

A dripping server writes one byte of its answer, waits a little (on an Event that the end of
the test sets), writes the next, for far longer than any deadline here: each single read gets
a byte well within the socket timeout, so only a deadline for the whole answer ends the call.
Each server counts what it sent and notices when the client hangs up (a write fails, or a read
sees the end). The tests assert those counts and the errors raised, never timings: without the
deadline, a dripping connection would run for 1,000 bytes and the server would not see a cut.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from athm_sync.client import ATHMovilClient, TransientError
from athm_sync.models import Payment, WebhookEvent
from tests.test_client import CAPTURED, PAYMENT_ID, PRIVATE, PUBLIC
from tests.test_client_tls import ca, ca_path, server_tls  # noqa: F401 (fixtures)

ECOMMERCE = "/api/business-transaction/ecommerce"
# Far more bytes than any deadline here lets through, one per DRIP_INTERVAL seconds.
DRIP_BYTES = 1000
DRIP_INTERVAL = 0.02
BUDGET = 0.3  # read_timeout: the whole answer of one attempt
CALLS = {
    "find_payment": (lambda c: c.find_payment(PAYMENT_ID), True),
    "authorize": (lambda c: c.authorize("the-jwt"), False),
    "refund": (lambda c: c.refund("215070443-abc", Decimal("1.00")), False),
    "create_payment": (lambda c: c.create_payment(total=Decimal("5.00")), False),
    "cancel": (lambda c: c.cancel(PAYMENT_ID), True),
    "update_phone_number": (
        lambda c: c.update_phone_number(PAYMENT_ID, "7875551234", "the-jwt"),
        True,
    ),
    "transaction_report": (
        lambda c: c.report_rows(
            datetime(2023, 1, 13, tzinfo=UTC), datetime(2023, 1, 14, tzinfo=UTC)
        ),
        True,
    ),
    "subscribe_webhooks": (lambda c: c.subscribe_webhooks("https://shop.example/hook"), True),
}


class DripServer(socketserver.ThreadingTCPServer):
    """A loopback HTTP server whose every answer misbehaves as ``behaviour`` says:

    ``drip_headers``: the status line, then one header's bytes one at a time;
    ``drip_body``: whole headers announcing a large body, then its bytes one at a time;
    ``stall_body``: whole headers and a part of the body, then silence until the client hangs
    up; ``echo_chunk``: a chunked body whose chunk size is the private token, echoed.

    ``requests`` counts requests read; ``sent`` the dripped bytes of each; ``cut`` whether the
    client hung up before the answer was over.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, behaviour: str, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.stop = threading.Event()
        self.requests = 0
        self.sent: list[int] = []
        self.cut: list[bool] = []
        self._done = threading.Condition()
        self._connections = self._finished = 0
        super().__init__(("127.0.0.1", 0), _DripHandler)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def settle(self) -> None:
        """Wait until every connection's handler has finished (it finishes once cut)."""
        with self._done:
            settled = self._done.wait_for(lambda: self._finished == self._connections, timeout=15)
        assert settled, "a dripping answer went on: the client never hung up"

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()

    def process_request(self, request, client_address) -> None:
        with self._done:
            self._connections += 1
        super().process_request(request, client_address)

    def finished(self, sent: int, cut: bool) -> None:
        with self._done:
            self.sent.append(sent)
            self.cut.append(cut)
            self._finished += 1
            self._done.notify_all()


class _DripHandler(socketserver.BaseRequestHandler):
    server: DripServer

    def handle(self) -> None:
        server = self.server
        sent, cut = 0, False
        try:
            conn = self.request
            conn.settimeout(15)
            if server.tls is not None:
                conn = server.tls.wrap_socket(conn, server_side=True)
            if not _read_request(conn):
                return
            with server._done:
                server.requests += 1
            body = json.dumps({"status": "success", "data": CAPTURED}).encode()
            if server.behaviour == "echo_chunk":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + PRIVATE.encode()
                    + b"\r\n"
                )
                cut = conn.recv(1) == b""
                return
            if server.behaviour == "drip_headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Drip: ")
                drip = b"a"
            else:
                length = len(body) + DRIP_BYTES
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % length
                )
                drip = b" "  # whitespace before the JSON: a valid answer, had it ended
            if server.behaviour == "stall_body":
                conn.sendall(b"  ")
                cut = conn.recv(1) == b""  # nothing more: the end of the stream is the client's
                return
            for _ in range(DRIP_BYTES):
                if server.stop.wait(DRIP_INTERVAL):
                    return  # the test is over
                conn.sendall(drip)
                sent += 1
        except OSError:
            cut = True
        finally:
            server.finished(sent, cut)


def _read_request(conn: socket.socket) -> bool:
    """Read one request (headers and its Content-Length body); False if the client left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


@pytest.fixture
def serve():
    """``serve(behaviour, tls=None)`` starts a DripServer, closed after the test."""
    servers: list[DripServer] = []

    def start(behaviour: str, tls: ssl.SSLContext | None = None) -> DripServer:
        server = DripServer(behaviour, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_client(sleeps):
    clients: list[ATHMovilClient] = []

    def build(url: str, **options) -> ATHMovilClient:
        options = {
            "connect_timeout": 5.0,
            "read_timeout": BUDGET,
            "max_attempts": 1,
            "retry_deadline": 30.0,
            **options,
        }
        client = ATHMovilClient(
            PUBLIC, PRIVATE, api_base_url=url, report_base_url=url, sleep=sleeps.append, **options
        )
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.mark.parametrize("behaviour", ["drip_headers", "drip_body"])
@pytest.mark.parametrize("call", CALLS)
def test_every_call_ends_at_its_deadline_through_a_drip(serve, make_client, call, behaviour):
    server = serve(behaviour)
    send, _ = CALLS[call]
    with pytest.raises(TransientError) as caught:
        send(make_client(server.url))
    server.settle()
    assert str(caught.value).endswith(f": no whole answer within {BUDGET} s")
    assert server.requests == 1
    assert server.cut == [True], "the client hung up on the drip"
    assert server.sent[0] < DRIP_BYTES


@pytest.mark.parametrize("call", ["refund", "find_payment"])
def test_a_stalled_body_ends_at_the_deadline(serve, make_client, call):
    server = serve("stall_body")
    send, _ = CALLS[call]
    with pytest.raises(TransientError, match=f"no whole answer within {BUDGET} s"):
        send(make_client(server.url))
    server.settle()
    assert (server.requests, server.cut) == (1, [True])


def test_a_drip_over_tls_is_cut_too(serve, make_client, server_tls, ca_path):  # noqa: F811
    server = serve("drip_body", tls=server_tls)
    client = make_client(server.url)
    client.session.verify = ca_path
    with pytest.raises(TransientError, match="no whole answer"):
        client.find_payment(PAYMENT_ID)
    server.settle()
    assert server.cut == [True] and server.sent[0] < DRIP_BYTES


@pytest.mark.parametrize(("call", "repeatable"), [(name, r) for name, (_, r) in CALLS.items()])
def test_retries_of_drips_stay_within_the_call_deadline(
    serve, make_client, sleeps, call, repeatable
):
    # 0.3 s per attempt, 0.7 s per call: at most three attempts, the last one shorter; a
    # refund, authorization or create payment whose request left is never sent again.
    server = serve("drip_body")
    send, _ = CALLS[call]
    with pytest.raises(TransientError) as caught:
        send(make_client(server.url, max_attempts=10, retry_deadline=0.7))
    server.settle()
    if repeatable:
        assert 2 <= server.requests <= 3
        last = float(str(caught.value).rsplit("within ", 1)[1].split(" s")[0])
        assert last <= BUDGET
    else:
        assert server.requests == 1 and sleeps == []
    assert all(server.cut) and len(server.cut) == server.requests


def test_what_the_connection_layer_quotes_of_an_answer_is_scrubbed(serve, make_client):
    # urllib3 quotes the bad chunk size it read: here, the private token.
    server = serve("echo_chunk")
    with pytest.raises(TransientError) as caught:
        make_client(server.url).refund("215070443-abc", Decimal("1.00"))
    server.settle()
    assert PRIVATE not in str(caught.value)
    assert "***" in str(caught.value) and server.requests == 1


# -- the webhook view --------------------------------------------------------------------------

SECRET = "w" * 40  # tests/settings.py


@pytest.mark.django_db(transaction=True)
def test_the_webhook_view_answers_within_its_budget_when_find_payment_drips(
    athm_settings, settings, serve
):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("10.00", metadata1="order-7")
    Payment.objects.track(ecommerce_id, total="10.00", metadata_1="order-7")
    sandbox.complete(ecommerce_id)
    body = sandbox.webhook_payload(ecommerce_id)
    server = serve("drip_body")
    # Wider than one call's BUDGET: the view's own work before the call (on a busy machine)
    # must not use up the budget before findPayment is even sent. The drip lasts 20 s.
    budget = 1.5
    settings.ATHM_SYNC = {
        **settings.ATHM_SYNC,
        "API_BASE_URL": server.url,
        "WEBHOOK_VERIFY_TIMEOUT": budget,
    }

    url = reverse("athm_sync:webhook", kwargs={"token": SECRET})
    answer = Client().post(url, json.dumps(body), content_type="application/json")

    server.settle()
    # The documented answer when ATH Móvil cannot answer in time: 200, the event kept for
    # the next run.
    assert answer.status_code == 200 and answer.json()["outcome"] == "pending"
    event = WebhookEvent.objects.get()
    assert event.outcome == "pending"
    assert f"no whole answer within {budget} s" in event.reason
    assert server.requests == 1 and server.cut == [True] and server.sent[0] < DRIP_BYTES
    assert Payment.objects.get().status == Payment.Status.OPEN


@pytest.mark.django_db(transaction=True)
def test_one_budget_bounds_every_call_of_a_webhook_that_names_no_payment(athm_settings, settings):
    """An id-less webhook may need a findPayment per payment it can be: all of them together
    end within WEBHOOK_VERIFY_TIMEOUT, not each (five slow answers would hold the view 5x)."""
    sandbox = athm_settings
    ids = []
    for _ in range(5):
        ecommerce_id, _ = sandbox.create_payment("10.00", metadata1="order-7")
        Payment.objects.track(ecommerce_id, total="10.00", metadata_1="order-7")
        ids.append(ecommerce_id)
    body = sandbox.webhook_payload(ids[0], "completed")
    del body["ecommerceId"]  # as Evertec documents eCommerce webhooks
    settings.ATHM_SYNC = {**settings.ATHM_SYNC, "WEBHOOK_VERIFY_TIMEOUT": 0.5}
    sandbox.set_latency(0.2)  # each answer well within the budget, five of them not
    sandbox.reset_counts()

    url = reverse("athm_sync:webhook", kwargs={"token": SECRET})
    answer = Client().post(url, json.dumps(body), content_type="application/json")

    assert answer.status_code == 200 and answer.json()["outcome"] == "pending"
    assert sandbox.counts()["findPayment"] < 5
    assert WebhookEvent.objects.get().reason.startswith("could not verify")
    assert set(Payment.objects.values_list("status", flat=True)) == {Payment.Status.OPEN}
