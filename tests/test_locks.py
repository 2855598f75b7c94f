"""``athm_sync.locks``: a named lease in the database, one holder at a time."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection

from athm_sync import clock
from athm_sync.locks import LOCK_LEASE, Lease, current_holder
from athm_sync.models import RunLock

NAME = "tests.lock"


@pytest.mark.django_db
def test_one_holder_at_a_time_and_only_the_holder_frees_it():
    first, second = Lease(NAME, "first"), Lease(NAME, "second")

    assert first.acquire()
    assert not second.acquire()
    assert current_holder(NAME).holder == "first"
    second.release()  # not its lease: nothing happens
    assert current_holder(NAME).holder == "first"
    first.release()

    assert current_holder(NAME) is None
    assert second.acquire()
    assert not first.renew()  # no longer first's
    assert second.renew()


@pytest.mark.django_db
def test_a_lease_nobody_renews_is_free_after_it_runs_out(time_machine):
    start = clock.now()
    time_machine.move_to(start, tick=False)
    dead = Lease(NAME, "dead")
    assert dead.acquire()

    time_machine.move_to(start + LOCK_LEASE - timedelta(seconds=1), tick=False)
    assert not Lease(NAME, "next").acquire()
    time_machine.move_to(start + LOCK_LEASE + timedelta(seconds=1), tick=False)

    assert current_holder(NAME) is None
    assert Lease(NAME, "next").acquire()
    assert current_holder(NAME).holder == "next"
    dead.release()  # the dead holder, back from the grave, cannot free the new one's lease
    assert current_holder(NAME).holder == "next"


@pytest.mark.django_db
def test_renewing_pushes_the_expiry_one_lease_ahead(time_machine):
    start = clock.now()
    time_machine.move_to(start, tick=False)
    lease = Lease(NAME, "me")
    assert lease.acquire()

    time_machine.move_to(start + timedelta(seconds=30), tick=False)
    assert lease.renew()

    assert current_holder(NAME).expires_at == start + timedelta(seconds=30) + LOCK_LEASE


@pytest.mark.django_db(transaction=True)
def test_takers_racing_for_a_free_lease_never_both_win():
    """Eight threads, each with its own database connection, try at the same moment."""
    takers = 8
    barrier = threading.Barrier(takers, timeout=30)
    won: list[str] = []
    failures: list[BaseException] = []

    def take(n: int) -> None:
        try:
            barrier.wait()
            if Lease(NAME, f"taker-{n}").acquire():
                won.append(f"taker-{n}")
        except BaseException as error:  # reported below
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(n,)) for n in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not failures
    assert len(won) == 1
    assert current_holder(NAME).holder == won[0]


@pytest.mark.django_db(transaction=True)
def test_a_kept_lease_is_renewed_from_a_thread_while_the_work_goes_on():
    lease = Lease(NAME, "me", lease=timedelta(seconds=0.3))  # renewed every 0.1 s
    assert lease.acquire()
    first_expiry = current_holder(NAME).expires_at

    with lease.kept() as keeper:
        assert keeper.renewed.wait(timeout=30)

    row = RunLock.objects.get(name=NAME)
    assert row.holder == "me" and row.expires_at > first_expiry
    lease.release()
    assert current_holder(NAME) is None
