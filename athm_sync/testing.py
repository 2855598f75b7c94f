"""A pytest plugin for testing a shop against the sandbox: opt in with

    # conftest.py
    pytest_plugins = ["athm_sync.testing"]

Fixtures (all named ``athm_...`` so they do not clash with a shop's own):

``athm_sandbox_server`` (session)
    one :class:`~athm_sync.sandbox.SandboxServer` on a free loopback port, started in this
    process, stopped at the end of the session.
``athm_sandbox``
    that server, emptied before and after the test (payments, faults, clock, subscription).
``athm_settings``
    ``ATHM_SYNC`` pointed at the sandbox (``API_BASE_URL``, ``REPORT_BASE_URL``, its tokens,
    ``CHECKOUT_BUTTON_SCRIPT_URL`` at its stand-in for Evertec's button script)
    through pytest-django's ``settings``, the shop's other keys kept, and the sandbox's
    ``expire`` moving the app's deadline of that payment too; returns the sandbox.
``athm_customer``
    a :class:`Customer`: pays, confirms, cancels, lets payments expire, refunds in the Business
    app and sends ATH Móvil's webhook, as the people and the service would.
``athm_sync_now``
    a :class:`SyncNow`: runs ``manage.py athm_sync`` in this process, returns a :class:`SyncResult`.
``athm_signals``
    a :class:`SignalLog` of every app signal sent during the test.
``athm_clock``
    a :class:`Clock` that moves the app's time and the sandbox's together (time-machine).

Signals fire when the database transaction commits, as in production, so a test that expects
one uses ``@pytest.mark.django_db(transaction=True)``. Nothing here imports Django models or
touches settings when the plugin is loaded; that happens when a fixture is used.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import requests

from athm_sync.sandbox import SandboxServer, StateConflict
from athm_sync.sandbox.formats import phone_digits

if TYPE_CHECKING:
    from django.test import Client

__all__ = [
    "Clock",
    "Customer",
    "SignalLog",
    "SyncNow",
    "SyncResult",
    "athm_clock",
    "athm_customer",
    "athm_sandbox",
    "athm_sandbox_server",
    "athm_settings",
    "athm_signals",
    "athm_sync_now",
]

# Every signal the app sends, by name.
SIGNAL_NAMES = (
    "payment_completed",
    "payment_cancelled",
    "payment_expired",
    "refund_sent",
    "payment_mismatched",
)


def require_app() -> None:
    """Fail the test with one clear line when ``athm_sync`` is not in ``INSTALLED_APPS``."""
    from django.apps import apps

    if not apps.is_installed("athm_sync"):
        pytest.fail(
            "athm_sync.testing: add 'athm_sync' to INSTALLED_APPS in your test settings",
            pytrace=False,
        )


# -- the sandbox ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def athm_sandbox_server() -> Iterator[SandboxServer]:
    """One fake ATH Móvil on a free loopback port for the whole session."""
    server = SandboxServer(port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def athm_sandbox(athm_sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The session's sandbox, emptied before and after the test."""
    athm_sandbox_server.state.reset()
    try:
        yield athm_sandbox_server
    finally:
        athm_sandbox_server.state.reset()


# pytest-django's ways of giving a test the database.
DATABASE_FIXTURES = (
    "db",
    "transactional_db",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
)


def uses_the_database(request: pytest.FixtureRequest) -> bool:
    """Whether the test may use the database (its mark or a pytest-django fixture)."""
    return request.node.get_closest_marker("django_db") is not None or any(
        name in request.fixturenames for name in DATABASE_FIXTURES
    )


@pytest.fixture
def athm_settings(
    request: pytest.FixtureRequest, settings: Any, athm_sandbox: SandboxServer
) -> Iterator[SandboxServer]:
    """Point ``ATHM_SYNC`` at the sandbox (bases and tokens), keeping the other keys, and
    let the sandbox's ``expire`` move the app's deadline of that payment too
    (:func:`athm_sync.sandbox_expiry.move_deadline_to_now`), so that it is an expiry here;
    only in a test that uses the database (without it, no payment is stored to move).

    Uses pytest-django's ``settings`` fixture, so the change is undone after the test.
    Yields the sandbox, so a test that needs both asks for this one fixture.
    """
    require_app()
    from athm_sync.sandbox_expiry import move_deadline_to_now

    state = athm_sandbox.state
    settings.ATHM_SYNC = {
        **getattr(settings, "ATHM_SYNC", {}),
        "API_BASE_URL": athm_sandbox.url,
        "REPORT_BASE_URL": athm_sandbox.url,
        "CHECKOUT_BUTTON_SCRIPT_URL": athm_sandbox.button_script_url,
        "PUBLIC_TOKEN": state.public_token,
        "PRIVATE_TOKEN": state.private_token,
    }
    if uses_the_database(request):
        state.add_expiry_listener(move_deadline_to_now)
    try:
        yield athm_sandbox
    finally:
        state.remove_expiry_listener(move_deadline_to_now)


# -- time ----------------------------------------------------------------------------------


class Clock:
    """Moves the time of the whole test: the app's and the sandbox's at once.

    Both read the system clock (the sandbox reads ``time.time()``), so one time-machine travel
    moves both and they never disagree. Time keeps ticking after a move (``tick=True``): HTTP
    timeouts and the run's leases behave as in real life. Needs ``time-machine`` installed;
    nothing is imported until time is first moved.
    """

    def __init__(self) -> None:
        """A clock at real time."""
        self._traveller: Any = None
        self._coordinates: Any = None

    def now(self) -> datetime:
        """The test's current time, an aware UTC datetime."""
        return datetime.now(UTC)

    def advance(self, seconds: float) -> datetime:
        """Move time forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        if self._coordinates is None:
            try:
                import time_machine
            except ImportError:
                pytest.fail(
                    "athm_sync.testing: moving time needs time-machine (pip install time-machine)",
                    pytrace=False,
                )
            self._traveller = time_machine.travel(self.now(), tick=True)
            self._coordinates = self._traveller.start()
        self._coordinates.shift(timedelta(seconds=seconds))
        return self.now()

    def advance_to(self, moment: datetime) -> datetime:
        """Move time forward to ``moment`` (an aware datetime); never back."""
        return self.advance(max(0.0, (moment - self.now()).total_seconds()))

    def stop(self) -> None:
        """Back to real time."""
        if self._traveller is not None:
            self._traveller.stop()
        self._traveller = self._coordinates = None


@pytest.fixture
def athm_clock() -> Iterator[Clock]:
    """A :class:`Clock` that moves the app's and the sandbox's time together; reset after."""
    clock = Clock()
    try:
        yield clock
    finally:
        clock.stop()


# -- the customer --------------------------------------------------------------------------


class Customer:
    """Plays the people and the service around a shop: the customer, the Business app, ATH Móvil.

    Every method takes the ecommerceId (a ``str``) the Payment Button returned, and returns the
    sandbox's view of the payment (:meth:`SandboxServer.payment`) unless it says otherwise.
    """

    def __init__(self, sandbox: SandboxServer, clock: Clock | None = None) -> None:
        """A customer of the shop whose ATH Móvil is ``sandbox``; ``clock`` moves time."""
        self.sandbox = sandbox
        self.clock = clock or Clock()

    def start(
        self,
        total: Decimal | str,
        *,
        metadata_1: str = "",
        metadata_2: str = "",
        subtotal: Decimal | str = "0",
        tax: Decimal | str = "0",
        items: list[dict[str, Any]] | None = None,
        timeout: int = 600,
    ) -> str:
        """Open a payment as the Payment Button does in the browser; return its ecommerceId.

        The payment is OPEN in ATH Móvil and unknown to the shop: the shop's own callback view
        (or :meth:`track`) registers it, as in production.
        """
        ecommerce_id, _ = self.sandbox.create_payment(
            str(total),
            subtotal=str(subtotal),
            tax=str(tax),
            metadata1=metadata_1,
            metadata2=metadata_2,
            items=items or [],
            timeout=timeout,
        )
        return ecommerce_id

    def track(self, ecommerce_id: str) -> Any:
        """Register the payment with the app (``Payment.objects.track``) from the sandbox's
        record of it, as a shop's button callback does; returns the app's ``Payment`` row."""
        from athm_sync.models import Payment

        require_app()
        seen = self.sandbox.payment(ecommerce_id)
        return Payment.objects.track(
            ecommerce_id,
            total=Decimal(seen["total"]),
            metadata_1=seen["metadata1"],
            metadata_2=seen["metadata2"],
            timeout=seen["timeout"],
            auth_token=seen["authToken"],
        )

    def pay(self, total: Decimal | str, **fields: Any) -> str:
        """The whole happy path: open, tracked by the shop, confirmed and completed in ATH Móvil.

        ``fields`` are :meth:`start`'s. The app learns of the completion on its next sync (or
        webhook): this only changes ATH Móvil, as a real payment would.
        """
        ecommerce_id = self.start(total, **fields)
        self.track(ecommerce_id)
        self.complete(ecommerce_id)
        return ecommerce_id

    def confirm(self, ecommerce_id: str, **customer: str) -> dict[str, Any]:
        """The customer confirms in the ATH Móvil app (``name``, ``phone``, ``email``)."""
        return self.sandbox.confirm(ecommerce_id, **customer)

    def complete(self, ecommerce_id: str, **customer: str) -> dict[str, Any]:
        """The customer confirms and the button captures: the payment is COMPLETED."""
        return self.sandbox.complete(ecommerce_id, **customer)

    def cancel(self, ecommerce_id: str) -> dict[str, Any]:
        """The customer cancels in the app: the payment is CANCEL (cancelled)."""
        return self.sandbox.cancel(ecommerce_id)

    def approve_on_phone(self, phone: str, ecommerce_id: str) -> dict[str, Any]:
        """The customer taps Approve on the sandbox's phone page for ``phone`` (the page's own
        POST): the payment is CONFIRM, and the shop's server captures it."""
        return self._on_phone(phone, ecommerce_id, "approve")

    def decline_on_phone(self, phone: str, ecommerce_id: str) -> dict[str, Any]:
        """The customer taps Decline on the sandbox's phone page for ``phone``: CANCEL."""
        return self._on_phone(phone, ecommerce_id, "decline")

    def _on_phone(self, phone: str, ecommerce_id: str, action: str) -> dict[str, Any]:
        url = f"{self.sandbox.url}/phone/{phone_digits(phone)}/{ecommerce_id}/{action}"
        response = requests.post(url, allow_redirects=False, timeout=10)
        if response.status_code != 303:
            raise StateConflict(f"the phone page answered {response.status_code} to {action}")
        return self.sandbox.payment(ecommerce_id)

    def let_expire(self, ecommerce_id: str) -> dict[str, Any]:
        """The customer does nothing until the payment's timeout: CANCEL (expired).

        Moves time itself (:class:`Clock`, through time-machine) to a second past the later of
        the sandbox's deadline and the app's: the app believes ATH Móvil's CANCEL is an expiry
        only once its own clock says the deadline passed (before, it is a cancellation).
        """
        seen = self.sandbox.payment(ecommerce_id)
        if seen["status"] not in ("OPEN", "CONFIRM"):
            raise StateConflict(f"payment {ecommerce_id} is {seen['status']}: it cannot expire")
        deadline = datetime.fromisoformat(seen["deadline"])
        tracked = self._tracked(ecommerce_id)
        if tracked is not None:
            deadline = max(deadline, tracked.deadline)
        self.clock.advance_to(deadline + timedelta(seconds=1))
        return self.sandbox.payment(ecommerce_id)

    @staticmethod
    def _tracked(ecommerce_id: str) -> Any:
        from django.apps import apps

        if not apps.is_installed("athm_sync"):
            return None
        from athm_sync.models import Payment

        return Payment.objects.filter(pk=ecommerce_id).first()

    def refund(self, ecommerce_id: str, amount: Decimal | str, message: str = "") -> dict[str, Any]:
        """The shop's staff refund in the ATH Business app: the app finds it in the report."""
        return self.sandbox.refund(ecommerce_id, str(amount), message)

    def webhook(self, ecommerce_id: str, status: str | None = None, **overrides: Any) -> dict:
        """The webhook ATH Móvil would post for this payment (``refund=True``: its last refund)."""
        if overrides.pop("refund", False):
            return self.sandbox.refund_webhook_payload(ecommerce_id)
        return self.sandbox.webhook_payload(ecommerce_id, status, **overrides)

    def send_webhook(
        self,
        ecommerce_id: str,
        status: str | None = None,
        *,
        refund: bool = False,
        client: Client | None = None,
        live_server_url: str | None = None,
        **overrides: Any,
    ) -> Any:
        """Post ATH Móvil's webhook for this payment to the shop's ``athm_sync:webhook`` view.

        Through Django's test ``client`` (a new one by default), returning its response; or,
        given ``live_server_url`` (pytest-django's ``live_server.url``), over real HTTP from the
        sandbox, returning the HTTP status. The URL carries ``ATHM_SYNC["WEBHOOK_SECRET"]``.
        """
        from django.urls import reverse

        from athm_sync.conf import get_settings

        require_app()
        secret = get_settings().webhook_secret
        if not secret:
            pytest.fail(
                "athm_sync.testing: set ATHM_SYNC['WEBHOOK_SECRET'] to send webhooks",
                pytrace=False,
            )
        payload = self.webhook(ecommerce_id, status, refund=refund, **overrides)
        path = reverse("athm_sync:webhook", kwargs={"token": secret})
        if live_server_url is not None:
            return self.sandbox.send_webhook(payload, live_server_url.rstrip("/") + path)
        if client is None:
            from django.test import Client

            client = Client()
        return client.post(path, data=json.dumps(payload), content_type="application/json")


@pytest.fixture
def athm_customer(athm_settings: SandboxServer, athm_clock: Clock) -> Customer:
    """A :class:`Customer` of the shop, with ``ATHM_SYNC`` pointed at the sandbox."""
    return Customer(athm_settings, athm_clock)


# -- running the sync ----------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    """One run of ``manage.py athm_sync --json``: its exit code, its JSON summary, its output.

    ``summary`` is the documented ``--json`` document (``checked``, ``transitions``,
    ``signals_sent``, ``errors``...), or ``{"exit_code": 2, "error": ...}`` when the run
    refused to start.
    """

    exit_code: int
    summary: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def transitions(self) -> dict[str, int]:
        """Payments that changed, by kind (``completed``, ``expired``, ``refund_sent``...)."""
        return {k: v for k, v in self.summary.get("transitions", {}).items() if v}


class SyncNow:
    """Runs ``manage.py athm_sync`` in this process, through the command itself."""

    def __call__(self, *ecommerce_ids: str, check: bool = True, **options: Any) -> SyncResult:
        """One run: the due payments, as cron runs it, or only ``ecommerce_ids`` (checked
        whether due or not). ``options`` are the command's (``dry_run=True``, ``limit=5``).

        With ``check`` (the default) a run that exits non-zero fails the test with its stderr.
        """
        from django.core.management import call_command
        from django.db import connection

        require_app()
        if connection.in_atomic_block:
            pytest.fail(
                "athm_sync.testing: athm_sync_now needs "
                "@pytest.mark.django_db(transaction=True): signals fire on commit and the run's "
                "workers use their own database connections",
                pytrace=False,
            )
        args = ["--json"]
        for ecommerce_id in ecommerce_ids:
            args += ["--ecommerce-id", str(ecommerce_id)]
        out, err = io.StringIO(), io.StringIO()
        try:
            call_command("athm_sync", *args, stdout=out, stderr=err, **options)
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
        result = SyncResult(
            code, json.loads(lines[-1]) if lines else {}, out.getvalue(), err.getvalue()
        )
        if check and code:
            pytest.fail(f"athm_sync exited {code}: {result.stderr.strip()}", pytrace=False)
        return result


@pytest.fixture
def athm_sync_now(athm_settings: SandboxServer) -> SyncNow:
    """Run the sync in-process against the sandbox: ``athm_sync_now()`` -> :class:`SyncResult`."""
    return SyncNow()


# -- signals -------------------------------------------------------------------------------


class SignalLog(list):
    """Signals sent, in order: ``(name, sender, kwargs)`` tuples (``signal`` left out)."""

    @property
    def names(self) -> list[str]:
        """The signals' names in the order they were sent."""
        return [name for name, _, _ in self]

    def of(self, name: str) -> list[dict[str, Any]]:
        """The keyword arguments of every ``name`` signal (``payment``, ``refund``...)."""
        return [kwargs for sent, _, kwargs in self if sent == name]


@pytest.fixture
def athm_signals() -> Iterator[SignalLog]:
    """Every app signal sent during the test, as a :class:`SignalLog`."""
    from athm_sync import signals

    log = SignalLog()

    def recorder(name: str) -> Any:
        def record(sender: Any, **kwargs: Any) -> None:
            kwargs.pop("signal")
            log.append((name, sender, kwargs))

        return record

    for name in SIGNAL_NAMES:
        getattr(signals, name).connect(
            recorder(name), weak=False, dispatch_uid=f"athm-testing-{name}"
        )
    try:
        yield log
    finally:
        for name in SIGNAL_NAMES:
            getattr(signals, name).disconnect(dispatch_uid=f"athm-testing-{name}")
