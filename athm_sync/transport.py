"""What of a request may have left: the send tracking of the client's connections.

What is retried depends on whether anything of the request was written to the socket. The
client records that as a fact while sending, in urllib3's connection classes, instead of
guessing it from the exception: urllib3 reports a TLS error while the answer is read as the
same ``SSLError`` as a failed handshake. The same classes hand each new or reused socket to
:mod:`athm_sync.deadlines`'s watchdog, which shuts it down when the attempt's whole-answer
deadline passes.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

from athm_sync.deadlines import WATCHDOG, Deadline


class NotSent(Exception):
    """The connection failed before the request left: safe to retry any call."""


# How far the current thread's attempt got. The client's attempt resets it to None before sending;
# the connection classes below move it to CONNECTING and then, before writing a byte of the
# request, to MAY_HAVE_SENT, which nothing in the same attempt moves back.
CONNECTING = "connecting"
MAY_HAVE_SENT = "may have sent"


class _Progress(threading.local):
    stage: str | None = None
    deadline: Deadline | None = None  # the current attempt's whole-answer deadline


progress = _Progress()


class _TracksSending:
    """Mixed into urllib3's connection classes: records in ``progress`` whether anything of
    the request may have been written.

    ``connect`` opens the TCP connection and, for HTTPS, does the TLS handshake (urllib3 calls
    it from ``_validate_conn`` before the request; for plain HTTP, http.client calls it from
    ``send`` on first use). ``send`` is how http.client writes the request line, headers and
    body. The CONNECT of a proxy tunnel is sent from inside ``connect``: it goes to the proxy,
    not to ATH Móvil, so it is not the request.
    """

    sock: Any
    _athm_connecting = False
    _athm_deadline: Deadline | None = None  # the latest attempt that used this connection

    def _new_conn(self) -> Any:
        # The socket as soon as it exists, before a proxy tunnel or TLS handshake is made on it.
        sock = super()._new_conn()  # type: ignore[misc]
        if progress.deadline is not None:
            WATCHDOG.guard(progress.deadline, self, sock)
        return sock

    def connect(self) -> None:
        if progress.stage != MAY_HAVE_SENT:
            progress.stage = CONNECTING
        self._athm_connecting = True
        try:
            super().connect()  # type: ignore[misc]
        finally:
            self._athm_connecting = False

    def send(self, data: Any) -> None:
        if not self._athm_connecting:
            if self.sock is None:
                self.connect()  # a failure here leaves the request unsent
            progress.stage = MAY_HAVE_SENT
            deadline = progress.deadline
            if deadline is not None and self._athm_deadline is not deadline:
                WATCHDOG.guard(deadline, self, self.sock)  # a kept-alive connection, reused
        super().send(data)  # type: ignore[misc]


class _TrackedHTTPConnection(_TracksSending, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TracksSending, HTTPSConnection):
    pass


class _TrackedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_TRACKED_POOLS = {"http": _TrackedHTTPConnectionPool, "https": _TrackedHTTPSConnectionPool}


class TrackingAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections record whether the request may have left.

    Direct connections and HTTP(S) proxies from the environment (``HTTPS_PROXY`` and the like,
    tunnelled with CONNECT or forwarding) use the tracked classes. A SOCKS proxy uses urllib3's
    own SOCKS connections, which are not tracked: through one, every failure counts as "may
    have sent", so create payment, authorization and refund are never retried.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _TRACKED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = _TRACKED_POOLS
        return manager


def prepare(
    method: str, url: str, headers: Mapping[str, str], body: Mapping[str, Any]
) -> requests.PreparedRequest:
    """The request ``requests.Request(method, url, data=json.dumps(body), headers=headers)
    .prepare()`` makes, without what that costs per call and a call to ATH Móvil never uses:
    parsing the URL again, a cookie jar and its header, auth from the URL, hooks. That was a
    fifth of a findPayment's CPU. Raises what ``prepare()`` would for a bad URL or header."""
    request = requests.PreparedRequest()
    request.method = method
    request.url = _prepared_url(url)
    for header in headers.items():
        check_header_validity(header)  # a header with a line break would split the request
    data = json.dumps(body)  # ASCII (ensure_ascii): its length is its length in bytes
    request.headers = CaseInsensitiveDict({**headers, "Content-Length": str(len(data))})
    request.body = data
    return request


@functools.lru_cache(maxsize=64)
def _prepared_url(url: str) -> str:
    # A client calls a handful of URLs: each is parsed and normalised once.
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    return str(prepared.url)
