"""Shared fixtures: the project's tests use the plugin shops use (:mod:`athm_sync.testing`).

The names the suite has always used are thin aliases of the plugin's fixtures, so that the
plugin is what the whole suite exercises. ``athm_settings`` comes from the plugin unchanged.
Nothing from ``athm_sync.testing`` is imported here: importing it before pytest loads it as a
plugin would stop pytest from rewriting its asserts (a warning).
"""

import pytest

from athm_sync.sandbox import SandboxServer

pytest_plugins = ["athm_sync.testing"]


@pytest.fixture(scope="session")
def sandbox_server(athm_sandbox_server: SandboxServer) -> SandboxServer:
    """One fake ATH Móvil on a free loopback port for the whole session."""
    return athm_sandbox_server


@pytest.fixture
def sandbox(athm_sandbox: SandboxServer) -> SandboxServer:
    """The session's sandbox, emptied before and after the test."""
    return athm_sandbox


@pytest.fixture
def received(athm_signals: list) -> list:
    """Every signal sent during the test: (signal name, sender, kwargs without ``signal``)."""
    return athm_signals


@pytest.fixture
def staff(client):
    """The test client, logged in as a staff member who may look at everything of
    athm_sync's in the admin, and change nothing."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("clerk", "clerk@example.com", "pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="athm_sync", codename__startswith="view")
    )
    client.force_login(user)
    return client
