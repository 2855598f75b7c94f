"""The sandbox's HTTP side: ATH Móvil's API paths, the ``/sandbox/`` control API, and faults.

One server answers both the API base (``/api/...``) and the report base (``/transactions/...``),
so a Django project points ``API_BASE_URL`` and ``REPORT_BASE_URL`` at the same URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from athm_sync.sandbox import phone
from athm_sync.sandbox.errors import ListenerFailed, SandboxError, StateConflict
from athm_sync.sandbox.state import SandboxState

logger = logging.getLogger("athm_sync.sandbox")

_ECOMMERCE = "/api/business-transaction/ecommerce"
# path -> (method, endpoint name used for counts and faults)
API_ROUTES: dict[str, tuple[str, str]] = {
    f"{_ECOMMERCE}/payment": ("POST", "payment"),
    f"{_ECOMMERCE}/business/findPayment": ("POST", "findPayment"),
    f"{_ECOMMERCE}/business/updatePhoneNumber": ("PUT", "updatePhoneNumber"),
    f"{_ECOMMERCE}/authorization": ("POST", "authorization"),
    f"{_ECOMMERCE}/business/cancel": ("POST", "cancel"),
    f"{_ECOMMERCE}/refund": ("POST", "refund"),
    "/transactions/v4/transactionReport": ("GET", "transactionReport"),
    "/transactions/webhook/post": ("POST", "webhookSubscribe"),
}
PAYMENT_ACTIONS = (
    "confirm",
    "capture",
    "complete",
    "cancel",
    "expire",
    "refund",
    "misroute",
    "tamper",
)
# The stand-in for Evertec's JavaScript button library, where Evertec serves the real one.
BUTTON_SCRIPT_PATH = "/api/modal/js/athmovil_base.js"
BUTTON_SCRIPT_FILE = Path(__file__).with_name("athmovil_base.js")
# A browser on the shop's page calls the API routes and loads the script from another origin.
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization",
    "Access-Control-Max-Age": "600",
}
_PHONE_PATH = re.compile(r"^/phone(?:/([^/]+)(?:/([^/]+)/([a-z]+))?)?$")
# Errors that mean "this payment is in the wrong state": the control API answers 409 for them.
_CONFLICT_CODES = {"BTRA_0013", "BTRA_0032", "BTRA_0037", "BTRA_0039"}
_PAYMENT_PATH = re.compile(r"^/sandbox/payments/([^/]+)(?:/([a-z]+))?$")

_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class _BadBody(Exception):
    """The request body is not a JSON object."""


def envelope(errorcode: str, message: str) -> dict[str, Any]:
    """ATH Móvil's error envelope."""
    return {"status": "error", "message": message, "errorcode": errorcode, "data": None}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients (benchmark workers) connect at once; the default backlog of 5 drops some.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SandboxState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted here so tests can prove keep-alive works: one connection for many calls.
        self.state.count_connection()
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Hang up idle keep-alive connections so their handler threads end with the server."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without it, small keep-alive responses wait ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    # An idle keep-alive connection is closed after this many seconds.
    timeout = 60
    server_version = "athm-sandbox"
    sys_version = ""
    server: _HTTPServer
    # Set per request: whether the answer carries the CORS headers (API routes and the script).
    _cors = False

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        return self.server.state

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send_json(400, envelope("BTRA_0001", "Invalid Content-Length"))
            return None
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**(_CORS_HEADERS if self._cors else {}), **(headers or {})}.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json", headers)

    def _hang_up(self) -> None:
        # No status line at all: the client sees the connection end (or a reset).
        self.close_connection = True

    @staticmethod
    def _json_object(body: bytes, allow_empty: bool = False) -> dict[str, Any]:
        if not body.strip():
            if allow_empty:
                return {}
            raise _BadBody("The request body is empty; a JSON object is required")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _BadBody("The request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _BadBody("The request body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if len(path) > 1:
            path = path.rstrip("/")
        self._query = parse_qs(parts.query)
        self._cors = path in API_ROUTES or path == BUTTON_SCRIPT_PATH
        body = self._read_body()
        if body is None:
            return
        if method == "OPTIONS" and self._cors:
            # The browser's preflight before a JSON POST or an Authorization header.
            self._send(204, b"", "text/plain")
        elif path == "/sandbox" or path.startswith("/sandbox/"):
            self._control(method, path, body)
        elif path == "/phone" or path.startswith("/phone/"):
            self._phone(method, path)
        elif path == BUTTON_SCRIPT_PATH and method == "GET":
            script = BUTTON_SCRIPT_FILE.read_bytes()
            self._send(200, script, "text/javascript; charset=utf-8")
        else:
            self._api(method, path, body)

    # -- the customer's phone --------------------------------------------------------------------

    def _send_html(self, status: int, html: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, html.encode("utf-8"), "text/html; charset=utf-8", headers)

    def _phone(self, method: str, path: str) -> None:
        match = _PHONE_PATH.match(path)
        digits = None
        if match and match.group(1) is not None:
            digits = phone.clean_digits(match.group(1))
        if match is None or (match.group(1) is not None and digits is None):
            self._send_html(404, phone.message_page("Not found", "No such phone page."))
            return
        if match.group(1) is None:
            if method != "GET":
                page = phone.message_page("Not allowed", "Use GET.")
                self._send_html(405, page, {"Allow": "GET"})
                return
            self._send_html(200, phone.index_page(self.state.phones()))
            return
        assert digits is not None
        pushes = self.state.pushes(digits)
        if not pushes:
            message = f"{phone.formatted(digits)} has received no payment request."
            self._send_html(404, phone.message_page("Not found", message))
            return
        back = f"/phone/{digits}/"
        ecommerce_id, action = match.group(2), match.group(3)
        if ecommerce_id is None:
            if method != "GET":
                self._send_html(405, phone.message_page("Not allowed", "Use GET.", back))
                return
            self._send_html(200, phone.phone_page(digits, pushes))
            return
        if action not in phone.ACTIONS:
            self._send_html(404, phone.message_page("Not found", "No such phone page.", back))
            return
        if method != "POST":
            page = phone.message_page("Not allowed", f"{action.title()} with the button.", back)
            self._send_html(405, page, {"Allow": "POST"})
            return
        try:
            refused = phone.act(self.state, digits, ecommerce_id, action)
        except SandboxError:
            message = "This phone never received that payment request."
            self._send_html(404, phone.message_page("Not found", message, back))
            return
        if refused is not None:
            self._send_html(409, phone.message_page("Nothing to do", refused, back))
            return
        self._send_html(303, phone.message_page("Done", "Done.", back), {"Location": back})

    # -- the ATH Móvil API ---------------------------------------------------------------------

    def _api(self, method: str, path: str, body: bytes) -> None:
        route = API_ROUTES.get(path)
        if route is None:
            self._send_json(404, envelope("NOT_FOUND", f"No such endpoint: {method} {path}"))
            return
        expected_method, name = route
        if method != expected_method:
            self._send_json(
                405,
                envelope("METHOD_NOT_ALLOWED", f"{path} expects {expected_method}"),
                headers={"Allow": expected_method},
            )
            return
        self.state.count(name)
        fault = self.state.take_fault(name)
        latency = self.state.latency
        if latency > 0:
            self.server.stopping.wait(latency)
        if fault is not None and self._serve_fault(fault):
            return
        try:
            data = self._answer(name, self._json_object(body, allow_empty=name == "authorization"))
        except _BadBody as exc:
            self._send_json(400, envelope("BTRA_0001", str(exc)))
        except SandboxError as exc:
            self._send_json(exc.http_status, envelope(exc.errorcode, exc.message))
        else:
            if fault is not None and fault.kind == "lost":
                # Done, but the answer never arrives: as a refund has been seen to go through.
                self._hang_up()
                self.state.deliver_webhooks(background=True)
                return
            # The report is a bare list; every other answer uses the success envelope.
            if name == "transactionReport":
                self._send_json(200, data)
            else:
                self._send_json(200, {"status": "success", "data": data})
        # An expiry noticed or a capture made during this call may owe the shop a webhook.
        self.state.deliver_webhooks(background=True)

    def _serve_fault(self, fault: Any) -> bool:
        """Serve ``fault``; True when it answered (or hung up) instead of the endpoint."""
        kind = fault.kind
        logger.debug("sandbox fault %s on %s", kind, self.path)
        if kind in ("latency", "lost"):  # "lost": served, then the answer is dropped
            self.server.stopping.wait(fault.delay)
            return False
        if kind == "timeout":
            # Interruptible, so stop() does not wait for a long held request.
            self.server.stopping.wait(fault.delay)
            self._hang_up()
        elif kind == "drop":
            self._hang_up()
        elif kind == "http500":
            self._send_json(500, envelope("BTRA_9999", "Internal Server Error"))
        elif kind == "http503":
            self._send_json(503, envelope("BTRA_9998", "Service Unavailable"))
        elif kind == "http429":
            self._send_json(
                429, envelope("BTRA_9998", "Too Many Requests"), headers={"Retry-After": "0"}
            )
        elif kind == "btra9998":
            self._send_json(fault.status or 200, envelope("BTRA_9998", "Communication error"))
        elif kind == "btra9999":
            self._send_json(fault.status or 500, envelope("BTRA_9999", "Internal error"))
        elif kind == "auth":
            self._send_json(401, envelope("BTRA_0401", "Invalid public token"))
        elif kind == "html":
            self._send(502, _HTML_502, "text/html")
        elif kind == "garbage":
            self._send_json(200, {"status": "success", "data": "nope"})
        return True

    def _check_tokens(self, data: dict[str, Any], private: bool = False) -> None:
        public = data.get("publicToken")
        if not public:
            raise SandboxError("BTRA_0003", "publicToken is required", 400)
        if public != self.state.public_token:
            raise SandboxError("BTRA_0401", "Invalid public token", 401)
        if private:
            token = data.get("privateToken")
            if not token:
                raise SandboxError("BTRA_0003", "privateToken is required", 400)
            if token != self.state.private_token:
                raise SandboxError("BTRA_0403", "Invalid private token", 401)

    @staticmethod
    def _ecommerce_id(data: dict[str, Any]) -> str:
        value = data.get("ecommerceId")
        if not isinstance(value, str) or not value.strip():
            raise SandboxError("BTRA_0003", "ecommerceId is required", 400)
        return value.strip()

    def _answer(self, name: str, data: dict[str, Any]) -> Any:
        state = self.state
        if name == "payment":
            self._check_tokens(data)
            if data.get("total") in (None, ""):
                raise SandboxError("BTRA_0003", "total is required", 400)
            ecommerce_id, token = _create_payment(state, data)
            return {"ecommerceId": ecommerce_id, "auth_token": token}
        if name == "findPayment":
            self._check_tokens(data)
            return state.payment_data(self._ecommerce_id(data))
        if name == "updatePhoneNumber":
            token_id = state.verify_token(self.headers.get("Authorization"))
            ecommerce_id = self._ecommerce_id(data)
            if token_id != ecommerce_id:
                raise SandboxError(
                    "token.invalid.header", "The token belongs to another payment", 401
                )
            return state.update_phone_number(ecommerce_id, data.get("phoneNumber"))
        if name == "authorization":
            return state.authorize(state.verify_token(self.headers.get("Authorization")))
        if name == "cancel":
            self._check_tokens(data)
            return state.api_cancel(self._ecommerce_id(data))
        if name == "refund":
            self._check_tokens(data, private=True)
            if data.get("amount") in (None, ""):
                raise SandboxError("BTRA_0003", "amount is required", 400)
            return state.api_refund(
                data.get("referenceNumber"), data["amount"], data.get("message")
            )
        if name == "transactionReport":
            self._check_tokens(data, private=True)
            return state.report(data.get("fromDate"), data.get("toDate"))
        if name == "webhookSubscribe":
            self._check_tokens(data, private=True)
            return state.subscribe(data)
        raise AssertionError(name)  # pragma: no cover - API_ROUTES and this switch agree

    # -- the control API -------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> None:
        try:
            data = self._json_object(body, allow_empty=True)
            status, answer = self._control_route(method, path, data)
        except _BadBody as exc:
            status, answer = 400, {"error": str(exc)}
        except SandboxError as exc:
            if exc.errorcode == "BTRA_0031":
                status = 404
            elif exc.errorcode in _CONFLICT_CODES:
                status = 409
            else:
                status = 400
            answer = {"error": exc.message, "errorcode": exc.errorcode}
        except StateConflict as exc:
            status, answer = 409, {"error": str(exc)}
        except (ValueError, TypeError) as exc:
            status, answer = 400, {"error": str(exc)}
        except OSError as exc:  # the shop's webhook listener could not be reached
            status, answer = 502, {"error": f"webhook delivery failed: {exc}"}
        except ListenerFailed as exc:  # the shop in this process, not the sandbox, failed
            status, answer = 500, {"error": str(exc)}
        self._send_json(status, answer)
        # Expiries noticed while reading (e.g. GET /sandbox/payments) owe their auto webhooks.
        self.state.deliver_webhooks()

    def _control_route(self, method: str, path: str, data: dict[str, Any]) -> tuple[int, Any]:
        state = self.state
        route = (method, path)
        if route == ("POST", "/sandbox/reset"):
            state.reset()
            return 200, {"reset": True}
        if route == ("GET", "/sandbox/payments"):
            return 200, [state.payment(eid) for eid in state.payment_ids()]
        if route == ("POST", "/sandbox/payments"):
            ecommerce_id, token = _create_payment(state, data)
            return 201, {"ecommerceId": ecommerce_id, "auth_token": token}
        match = _PAYMENT_PATH.match(path)
        if match:
            ecommerce_id, action = match.group(1), match.group(2)
            if action is None and method == "GET":
                return 200, state.payment(ecommerce_id)
            if action in PAYMENT_ACTIONS and method == "POST":
                return 200, self._payment_action(ecommerce_id, action, data)
        if route == ("GET", "/sandbox/pushes"):
            wanted = self._query.get("phone")
            if wanted is None:
                return 200, state.phones()
            if not phone.clean_digits(wanted[0].strip()):
                raise ValueError("phone must be the phone number's digits, e.g. 7875550142")
            return 200, state.pushes(wanted[0].strip())
        if route == ("GET", "/sandbox/clock"):
            return 200, state.clock()
        if route == ("POST", "/sandbox/clock/advance"):
            state.advance(float(data.get("seconds", 0)))
            return 200, state.clock()
        if route == ("GET", "/sandbox/latency"):
            return 200, {"seconds": state.latency}
        if route == ("POST", "/sandbox/latency"):
            state.set_latency(float(data.get("seconds", 0)))
            return 200, {"seconds": state.latency}
        if route == ("GET", "/sandbox/faults"):
            return 200, state.faults()
        if route == ("POST", "/sandbox/faults"):
            state.inject_fault(
                str(data.get("kind", "")),
                endpoint=str(data.get("endpoint", "*")),
                times=int(data.get("times", 1)),
                delay=float(data.get("delay", 0.0)),
                status=None if data.get("status") is None else int(data["status"]),
            )
            return 201, state.faults()
        if route == ("DELETE", "/sandbox/faults"):
            state.clear_faults()
            return 200, []
        if route == ("GET", "/sandbox/requests"):
            return 200, state.counts()
        if route == ("DELETE", "/sandbox/requests"):
            state.reset_counts()
            return 200, state.counts()
        if route == ("GET", "/sandbox/connections"):
            return 200, {"connections": state.connections()}
        if route == ("GET", "/sandbox/webhooks"):
            return 200, {
                "subscription": state.subscription,
                "autoWebhooks": state.auto_webhooks,
                "shape": state.webhook_shape,
                "deliveries": state.deliveries,
            }
        if route == ("POST", "/sandbox/webhooks"):
            return 200, self._post_webhook(data)
        if route == ("POST", "/sandbox/webhooks/auto"):
            state.auto_webhooks = bool(data.get("enabled", True))
            return 200, {"autoWebhooks": state.auto_webhooks}
        if route == ("POST", "/sandbox/webhooks/shape"):
            state.webhook_shape = str(data.get("shape", ""))
            return 200, {"shape": state.webhook_shape}
        if route == ("GET", "/sandbox/app-refunds"):
            return 200, {"ownReference": state.own_app_references}
        if route == ("POST", "/sandbox/app-refunds"):
            own = data.get("ownReference", True)
            if not isinstance(own, bool):
                raise ValueError("ownReference must be true or false")
            state.set_own_app_references(own)
            return 200, {"ownReference": state.own_app_references}
        return 404, {"error": f"No such sandbox route: {method} {path}"}

    def _payment_action(self, ecommerce_id: str, action: str, data: dict[str, Any]) -> Any:
        state = self.state
        if action in ("confirm", "complete"):
            customer = {
                key: str(data[source])
                for key, source in (("name", "name"), ("phone", "phone"), ("email", "email"))
                if data.get(source) is not None
            }
            if "phoneNumber" in data and "phone" not in customer:
                customer["phone"] = str(data["phoneNumber"])
            return getattr(state, action)(ecommerce_id, **customer)
        if action == "refund":
            if data.get("amount") in (None, ""):
                raise ValueError("amount is required")
            return state.refund(ecommerce_id, data["amount"], message=str(data.get("message", "")))
        if action == "misroute":
            answer_with = data.get("answerWith")
            if answer_with is not None and not isinstance(answer_with, str):
                raise ValueError("answerWith must be an ecommerceId or null")
            state.misroute(ecommerce_id, answer_with)
            return state.payment_data(ecommerce_id)
        if action == "tamper":
            fields = data.get("fields") or {}
            if not isinstance(fields, dict):
                raise ValueError("fields must be an object")
            state.tamper(ecommerce_id, **fields)
            return state.payment_data(ecommerce_id)
        return getattr(state, action)(ecommerce_id)

    def _post_webhook(self, data: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        if isinstance(data.get("payload"), dict):
            payload = data["payload"]
        else:
            ecommerce_id = data.get("ecommerceId")
            if not isinstance(ecommerce_id, str):
                raise ValueError("ecommerceId (or a payload) is required")
            if data.get("refund") or data.get("refundIndex") is not None:
                payload = state.refund_webhook_payload(
                    ecommerce_id, int(data.get("refundIndex", -1))
                )
            else:
                payload = state.webhook_payload(
                    ecommerce_id, data.get("status"), **(data.get("overrides") or {})
                )
        status = state.send_webhook(payload, data.get("listenerURL"))
        return {"status": status, "payload": payload}


def _create_payment(state: SandboxState, data: dict[str, Any]) -> tuple[str, str]:
    """Create a payment from a create-payment body (the API's or the control API's)."""
    return state.create_payment(
        total=data.get("total"),
        subtotal=data.get("subtotal", 0),
        tax=data.get("tax", 0),
        metadata1=data.get("metadata1", ""),
        metadata2=data.get("metadata2", ""),
        items=data.get("items"),
        phone_number=data.get("phoneNumber"),
        timeout=data.get("timeout"),
    )


class SandboxServer:
    """A fake ATH Móvil served over HTTP on loopback, with its :class:`SandboxState`.

    ``SandboxServer().start()`` runs it in a background thread; use it as a context manager or
    call :meth:`stop`. :attr:`url` serves as both the API base and the report base.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        public_token: str = "sandbox-public-token",  # noqa: S107 - a sandbox token, not a secret
        private_token: str = "sandbox-private-token",  # noqa: S107
        latency: float = 0.0,
    ) -> None:
        """Bind the socket now (so a port in use fails here); nothing is served until start()."""
        if latency < 0:
            raise ValueError("latency cannot be negative")
        self.state = SandboxState(public_token, private_token, latency)
        self._httpd = _HTTPServer((host, port), self.state)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when created with port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port``: the API base and the report base at once."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def button_script_url(self) -> str:
        """Where this sandbox serves its stand-in for Evertec's ``athmovil_base.js``."""
        return f"{self.url}{BUTTON_SCRIPT_PATH}"

    @property
    def phone_url(self) -> str:
        """The index of the phone pages (``/phone/``), where a person approves or declines."""
        return f"{self.url}/phone/"

    def start(self) -> SandboxServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"athm-sandbox-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called from another thread."""
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving, release held requests and close the socket."""
        self._httpd.stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.close_open_connections()
        self._httpd.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- delegates to the state, for tests and scripts ----------------------------------------

    def create_payment(self, total: Any, **kwargs: Any) -> tuple[str, str]:
        """See :meth:`SandboxState.create_payment`."""
        return self.state.create_payment(total, **kwargs)

    def confirm(self, ecommerce_id: str, **customer: str) -> dict[str, Any]:
        """See :meth:`SandboxState.confirm`."""
        return self.state.confirm(ecommerce_id, **customer)

    def capture(self, ecommerce_id: str) -> dict[str, Any]:
        """See :meth:`SandboxState.capture`."""
        return self.state.capture(ecommerce_id)

    def complete(self, ecommerce_id: str, **customer: str) -> dict[str, Any]:
        """See :meth:`SandboxState.complete`."""
        return self.state.complete(ecommerce_id, **customer)

    def cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """See :meth:`SandboxState.cancel`."""
        return self.state.cancel(ecommerce_id)

    def expire(self, ecommerce_id: str) -> dict[str, Any]:
        """See :meth:`SandboxState.expire`."""
        return self.state.expire(ecommerce_id)

    def refund(self, ecommerce_id: str, amount: Any, message: str = "") -> dict[str, Any]:
        """See :meth:`SandboxState.refund`."""
        return self.state.refund(ecommerce_id, amount, message)

    def set_own_app_references(self, own: bool) -> None:
        """See :meth:`SandboxState.set_own_app_references`."""
        self.state.set_own_app_references(own)

    def phones(self) -> list[dict[str, Any]]:
        """See :meth:`Ledger.phones`."""
        return self.state.phones()

    def pushes(self, phone: Any) -> list[dict[str, Any]]:
        """See :meth:`Ledger.pushes`: what ``/phone/<digits>/`` shows, as data."""
        return self.state.pushes(phone)

    def payment(self, ecommerce_id: str) -> dict[str, Any]:
        """See :meth:`SandboxState.payment`."""
        return self.state.payment(ecommerce_id)

    def misroute(self, ecommerce_id: str, answer_with: str | None) -> None:
        """See :meth:`SandboxState.misroute`."""
        self.state.misroute(ecommerce_id, answer_with)

    def tamper(self, ecommerce_id: str, **fields: Any) -> None:
        """See :meth:`SandboxState.tamper`."""
        self.state.tamper(ecommerce_id, **fields)

    def advance(self, seconds: float) -> Any:
        """See :meth:`SandboxState.advance`."""
        return self.state.advance(seconds)

    def now(self) -> Any:
        """See :meth:`SandboxState.now`."""
        return self.state.now()

    def set_latency(self, seconds: float) -> None:
        """See :meth:`SandboxState.set_latency`."""
        self.state.set_latency(seconds)

    def inject_fault(self, kind: str, endpoint: str = "*", times: int = 1, **options: Any) -> None:
        """See :meth:`SandboxState.inject_fault`."""
        self.state.inject_fault(kind, endpoint, times, **options)

    def clear_faults(self) -> None:
        """See :meth:`SandboxState.clear_faults`."""
        self.state.clear_faults()

    def counts(self) -> dict[str, int]:
        """See :meth:`SandboxState.counts`."""
        return self.state.counts()

    def reset_counts(self) -> None:
        """See :meth:`SandboxState.reset_counts`."""
        self.state.reset_counts()

    def connections(self) -> int:
        """See :meth:`SandboxState.connections`."""
        return self.state.connections()

    def webhook_payload(
        self, ecommerce_id: str, status: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """See :meth:`SandboxState.webhook_payload`."""
        return self.state.webhook_payload(ecommerce_id, status, **overrides)

    def refund_webhook_payload(self, ecommerce_id: str, refund_index: int = -1) -> dict[str, Any]:
        """See :meth:`SandboxState.refund_webhook_payload`."""
        return self.state.refund_webhook_payload(ecommerce_id, refund_index)

    def send_webhook(self, payload: dict[str, Any], listener_url: str | None = None) -> int:
        """See :meth:`SandboxState.send_webhook`."""
        return self.state.send_webhook(payload, listener_url)

    def reset(self) -> None:
        """See :meth:`SandboxState.reset`."""
        self.state.reset()
