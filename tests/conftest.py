"""Shared fixtures: one sandbox ATH Móvil server per test session, reset for every test."""

from collections.abc import Iterator

import pytest

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
