"""Shared fixtures: one sandbox ATH Móvil server per test session, reset for every test."""

from collections.abc import Iterator

import pytest

from athm_sync import signals
from athm_sync.sandbox import SandboxServer


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """One fake ATH Móvil on a free loopback port for the whole session."""
    server = SandboxServer(port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The session's sandbox, emptied before and after the test."""
    sandbox_server.state.reset()
    try:
        yield sandbox_server
    finally:
        sandbox_server.state.reset()


@pytest.fixture
def athm_settings(settings, sandbox: SandboxServer) -> SandboxServer:
    """Point ``ATHM_SYNC``'s API and report bases at the sandbox; returns the sandbox."""
    settings.ATHM_SYNC = {
        **settings.ATHM_SYNC,
        "API_BASE_URL": sandbox.url,
        "REPORT_BASE_URL": sandbox.url,
    }
    return sandbox


SIGNALS = {
    "payment_completed": signals.payment_completed,
    "payment_cancelled": signals.payment_cancelled,
    "payment_expired": signals.payment_expired,
    "refund_sent": signals.refund_sent,
    "payment_mismatched": signals.payment_mismatched,
}


@pytest.fixture
def received():
    """Every signal sent during the test: (signal name, sender, kwargs without ``signal``)."""
    calls: list[tuple[str, type, dict]] = []

    def recorder(name):
        def record(sender, **kwargs):
            kwargs.pop("signal")
            calls.append((name, sender, kwargs))

        return record

    for name, signal in SIGNALS.items():
        signal.connect(recorder(name), weak=False, dispatch_uid=f"test-received-{name}")
    yield calls
    for name, signal in SIGNALS.items():
        signal.disconnect(dispatch_uid=f"test-received-{name}")
