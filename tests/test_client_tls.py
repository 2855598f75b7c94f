"""The client against real loopback servers: is a call retried when its request may have left?

Each server runs in threads on 127.0.0.1 and counts what it saw: TCP connections, completed TLS
handshakes and fully read HTTP requests. The tests assert those counts, never timings: a
non-repeatable call (refund, authorization, create payment) must reach the server at most once,
and any call whose request never left must be retried.
"""

import contextlib
import json
import os
import socket
import ssl
import threading
from collections import Counter
from decimal import Decimal

import pytest
import trustme

from athm_sync.client import ATHMovilClient, TransientError
from tests.test_client import CAPTURED, PAYMENT_ID, PRIVATE, PUBLIC

ECOMMERCE = "/api/business-transaction/ecommerce"
CALLS = {
    "refund": (lambda c: c.refund("215070443-abc", Decimal("1.00")), f"{ECOMMERCE}/refund"),
    "authorize": (lambda c: c.authorize("the-jwt"), f"{ECOMMERCE}/authorization"),
    "create_payment": (lambda c: c.create_payment(total=Decimal("5.00")), f"{ECOMMERCE}/payment"),
    "find_payment": (lambda c: c.find_payment(PAYMENT_ID), f"{ECOMMERCE}/business/findPayment"),
}
NOT_REPEATABLE = ["refund", "authorize", "create_payment"]
MAX_ATTEMPTS = 3

# A TLS 1.2/1.3 application-data record header followed by bytes no key decrypts.
BOGUS_RECORD = b"\x17\x03\x03\x00\x20" + b"\x5a" * 32
# A record header announcing 16 KiB, 10 bytes of it, then the connection ends.
CUT_RECORD = b"\x17\x03\x03\x40\x00" + b"\x5a" * 10


class _Listener:
    """A listener on a free loopback port that serves each connection in a thread of its own
    (``_serve``); subclasses set their own fields before calling ``__init__``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def settle(self) -> None:
        """Wait for every connection seen so far to be finished with."""
        for thread in list(self._threads):
            thread.join(timeout=10)
            assert not thread.is_alive(), f"a {type(self).__name__} connection is stuck"

    def stop(self) -> None:
        self._stop.set()
        self._accepter.join(timeout=10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._accepted()
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _accepted(self) -> None:
        """Called for each connection, before it is served."""

    def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError


class LoopbackServer(_Listener):
    """A server on a free loopback port; each connection runs ``behaviour`` in its own thread.

    Behaviours: ``answer`` (a findPayment success, keep-alive), ``bogus_record`` and
    ``cut_record`` (after reading the request, break TLS by writing on the raw socket through a
    dup'd fd), ``hang_up`` (read the request, close without answering), ``stall_answer`` (read
    the request, never answer), ``abort_handshake`` (read the start of the ClientHello, then
    close) and ``stall_handshake`` (never answer the ClientHello). ``counts`` has ``connections``,
    ``handshakes`` (completed), ``handshake_failures`` and ``requests`` (fully read);
    ``paths`` the path of each request read.
    """

    def __init__(self, behaviour: str, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.counts: Counter[str] = Counter()
        self.paths: list[str] = []
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def settle(self) -> Counter[str]:
        """Wait for every connection seen so far to be finished with; returns the counts."""
        super().settle()
        return self.counts

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _accepted(self) -> None:
        self._count("connections")

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            if self.behaviour == "abort_handshake":
                sock.recv(5)  # the first record header of the ClientHello
                return
            if self.behaviour == "stall_handshake":
                _drain(sock)
                return
            conn = sock
            if self.tls is not None:
                conn = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                try:
                    conn.do_handshake()
                except (OSError, ssl.SSLError):
                    self._count("handshake_failures")
                    return
                self._count("handshakes")
            while self._read_request(conn):
                if self.behaviour != "answer":
                    self._break(conn)
                    return
                body = json.dumps({"status": "success", "data": CAPTURED}).encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        finally:
            sock.close()

    def _read_request(self, conn: socket.socket) -> bool:
        """Read one whole request (headers and Content-Length body); False at end of stream."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        with self._lock:
            self.counts["requests"] += 1
            self.paths.append(lines[0].split(" ")[1])
        return True

    def _break(self, conn: socket.socket) -> None:
        if self.behaviour == "hang_up":
            return  # the caller closes the socket: no answer, no TLS close_notify
        if self.behaviour == "stall_answer":
            _drain(conn)
            return
        record = BOGUS_RECORD if self.behaviour == "bogus_record" else CUT_RECORD
        # Write around the TLS layer: the same socket through a second file descriptor.
        raw = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            raw.sendall(record)
        finally:
            raw.close()


class TunnelProxy(_Listener):
    """An HTTP CONNECT proxy on loopback that tunnels only to 127.0.0.1; counts tunnels."""

    def __init__(self) -> None:
        self.tunnels = 0
        super().__init__()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        with client:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(4096)
                if not chunk:
                    return
                data += chunk
            method, target, _ = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host != "127.0.0.1":
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels += 1
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join(timeout=10)


def _drain(sock: socket.socket) -> None:
    """Say nothing and read until the client hangs up."""
    while sock.recv(65536):
        pass


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture(autouse=True)
def no_environment_overrides(monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE override ``session.verify``, and proxies come from the
    environment: neither may decide where these tests connect or what they trust."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_path(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def server_tls(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def serve(server_tls):
    """``serve(behaviour, tls=True)`` starts a LoopbackServer, stopped after the test."""
    servers = []

    def start(behaviour, tls=True):
        server = LoopbackServer(behaviour, server_tls if tls else None)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def proxy():
    tunnel = TunnelProxy()
    yield tunnel
    tunnel.stop()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_client(ca_path, sleeps):
    """``make_client(url, trusted=True, timeout=5.0)``: a client whose connect and read timeouts
    are ``timeout`` and whose waits between attempts are recorded in ``sleeps``."""
    clients = []

    def build(url, trusted=True, timeout=5.0):
        client = ATHMovilClient(
            PUBLIC,
            PRIVATE,
            api_base_url=url,
            report_base_url=url,
            connect_timeout=timeout,
            read_timeout=timeout,
            max_attempts=MAX_ATTEMPTS,
            retry_deadline=60,
            sleep=sleeps.append,
        )
        if trusted:
            client.session.verify = ca_path
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def test_the_loopback_tls_server_answers_and_keeps_the_connection(serve, make_client):
    server = serve("answer")
    client = make_client(server.url)
    assert client.find_payment(PAYMENT_ID).status == "COMPLETED"
    assert client.find_payment(PAYMENT_ID).status == "COMPLETED"
    client.close()
    counts = server.settle()
    assert (counts["connections"], counts["handshakes"], counts["requests"]) == (1, 1, 2)


@pytest.mark.parametrize("behaviour", ["bogus_record", "cut_record", "hang_up"])
@pytest.mark.parametrize("call", NOT_REPEATABLE)
def test_a_tls_failure_after_the_request_was_read_is_not_retried(
    serve, make_client, sleeps, call, behaviour
):
    server = serve(behaviour)
    send, path = CALLS[call]
    with pytest.raises(TransientError) as caught:
        send(make_client(server.url))
    counts = server.settle()
    assert counts["requests"] == 1, f"{call} reached the server {counts['requests']} times"
    assert server.paths == [path]
    assert (counts["connections"], counts["handshakes"]) == (1, 1)
    assert "the connection failed" in str(caught.value)
    assert sleeps == []


@pytest.mark.parametrize("behaviour", ["bogus_record", "cut_record", "hang_up"])
def test_the_same_failure_of_find_payment_is_retried(serve, make_client, sleeps, behaviour):
    server = serve(behaviour)
    with pytest.raises(TransientError):
        make_client(server.url).find_payment(PAYMENT_ID)
    counts = server.settle()
    assert counts["requests"] == MAX_ATTEMPTS
    assert counts["connections"] == counts["handshakes"] == MAX_ATTEMPTS
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_a_refund_is_retried_when_the_server_certificate_is_not_trusted(serve, make_client, sleeps):
    server = serve("answer")
    with pytest.raises(TransientError) as caught:
        make_client(server.url, trusted=False).refund("215070443-abc", Decimal("1.00"))
    counts = server.settle()
    # Every attempt started a handshake the client refused to finish; no request was sent.
    assert counts["connections"] == counts["handshake_failures"] == MAX_ATTEMPTS
    assert (counts["handshakes"], counts["requests"]) == (0, 0)
    assert "could not connect" in str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_a_refund_is_retried_when_the_server_aborts_the_handshake(serve, make_client, sleeps):
    server = serve("abort_handshake")
    with pytest.raises(TransientError) as caught:
        make_client(server.url).refund("215070443-abc", Decimal("1.00"))
    counts = server.settle()
    assert counts["connections"] == MAX_ATTEMPTS
    assert (counts["handshakes"], counts["requests"]) == (0, 0)
    assert "could not connect" in str(caught.value)
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_a_refund_is_retried_when_the_handshake_times_out(serve, make_client, sleeps):
    # urllib3 reports a handshake that timed out as a ReadTimeout: the request never left.
    server = serve("stall_handshake")
    with pytest.raises(TransientError) as caught:
        make_client(server.url, timeout=0.2).refund("215070443-abc", Decimal("1.00"))
    counts = server.settle()
    assert counts["connections"] == MAX_ATTEMPTS
    assert (counts["handshakes"], counts["requests"]) == (0, 0)
    assert "could not connect" in str(caught.value)
    assert len(sleeps) == MAX_ATTEMPTS - 1


@pytest.mark.parametrize(("call", "attempts"), [("refund", 1), ("find_payment", MAX_ATTEMPTS)])
def test_a_request_read_and_never_answered(serve, make_client, sleeps, call, attempts):
    server = serve("stall_answer")
    send, path = CALLS[call]
    with pytest.raises(TransientError) as caught:
        send(make_client(server.url, timeout=0.2))
    counts = server.settle()
    assert (counts["connections"], counts["handshakes"], counts["requests"]) == (attempts,) * 3
    assert server.paths == [path] * attempts
    assert "no whole answer within 0.2 s" in str(caught.value)
    assert len(sleeps) == attempts - 1


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_refund_is_retried_when_the_connection_is_refused(make_client, sleeps, scheme):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free now, and nobody listens once it is closed
    with pytest.raises(TransientError) as caught:
        make_client(f"{scheme}://127.0.0.1:{port}").refund("215070443-abc", Decimal("1.00"))
    assert "could not connect" in str(caught.value)
    assert len(sleeps) == MAX_ATTEMPTS - 1, "every attempt was made"


@pytest.mark.parametrize("call", NOT_REPEATABLE)
def test_plain_http_a_request_read_then_left_unanswered_is_sent_once(
    serve, make_client, sleeps, call
):
    server = serve("hang_up", tls=False)
    send, path = CALLS[call]
    with pytest.raises(TransientError) as caught:
        send(make_client(server.url))
    counts = server.settle()
    assert (counts["connections"], counts["requests"]) == (1, 1)
    assert server.paths == [path]
    assert "the connection failed" in str(caught.value)
    assert sleeps == []


def test_plain_http_find_payment_left_unanswered_is_retried(serve, make_client, sleeps):
    server = serve("hang_up", tls=False)
    with pytest.raises(TransientError):
        make_client(server.url).find_payment(PAYMENT_ID)
    assert server.settle()["requests"] == MAX_ATTEMPTS
    assert len(sleeps) == MAX_ATTEMPTS - 1


# -- through an HTTPS proxy from the environment ---------------------------------------------


def test_an_environment_proxy_still_works(serve, make_client, proxy, monkeypatch):
    server = serve("answer")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    client = make_client(server.url)
    assert client.find_payment(PAYMENT_ID).status == "COMPLETED"
    client.close()
    proxy.settle()
    assert proxy.tunnels == 1
    assert server.settle()["requests"] == 1


def test_through_a_proxy_a_refund_read_by_the_server_is_not_retried(
    serve, make_client, proxy, monkeypatch, sleeps
):
    server = serve("bogus_record")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    with pytest.raises(TransientError):
        make_client(server.url).refund("215070443-abc", Decimal("1.00"))
    proxy.settle()
    assert (proxy.tunnels, server.settle()["requests"]) == (1, 1)
    assert sleeps == []


def test_through_a_proxy_a_failed_handshake_is_retried(
    serve, make_client, proxy, monkeypatch, sleeps
):
    # The CONNECT the client writes to the proxy is not the request: the refund never left.
    server = serve("answer")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    with pytest.raises(TransientError) as caught:
        make_client(server.url, trusted=False).refund("215070443-abc", Decimal("1.00"))
    proxy.settle()
    counts = server.settle()
    assert proxy.tunnels == counts["connections"] == MAX_ATTEMPTS
    assert (counts["handshakes"], counts["requests"]) == (0, 0)
    assert "could not connect" in str(caught.value)
    assert len(sleeps) == MAX_ATTEMPTS - 1
