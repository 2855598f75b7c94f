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
def login():
    """Log a new test client in to the admin: ``login("view")`` as a staff member with the
    athm_sync permissions whose codenames start with the prefixes given ("view", "change",
    "refund"), ``login(superuser=True)`` as a superuser."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.db.models import Q
    from django.test import Client

    made = 0

    def log_in(*prefixes: str, superuser: bool = False) -> Client:
        nonlocal made
        made += 1
        users = get_user_model().objects
        name = f"user{made}"
        if superuser:
            user = users.create_superuser(name, f"{name}@example.com", "pw")
        else:
            user = users.create_user(name, f"{name}@example.com", "pw", is_staff=True)
            wanted = Q()
            for prefix in prefixes:
                wanted |= Q(codename__startswith=prefix)
            user.user_permissions.add(
                *Permission.objects.filter(wanted, content_type__app_label="athm_sync")
            )
        client = Client()
        client.force_login(user)
        return client

    return log_in


@pytest.fixture
def staff(login):
    """A test client logged in as a staff member who may look at everything of athm_sync's in
    the admin, and do nothing."""
    return login("view")


@pytest.fixture
def operator(login):
    """A test client logged in as a staff member who may look at everything of athm_sync's in
    the admin and use its actions ("Check now", "Reprocess", "Send again"; the change
    permissions), but not refund."""
    return login("view", "change")
