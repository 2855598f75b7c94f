"""``athm_sync --watch``: passes until a signal, as a container or supervisor runs it."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from decimal import Decimal
from typing import Any

import pytest

from athm_sync import watch as watch_module
from athm_sync.conf import get_settings
from athm_sync.models import Payment, SyncRun
from athm_sync.runner import RunOptions
from tests.commands import call, run_process
from tests.test_overlap import REPO_ROOT, child_env, first_call

pytestmark = pytest.mark.django_db(transaction=True)


def test_watch_runs_pass_after_pass_then_stops(athm_settings, received):
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("5.00")
    Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
    sandbox.complete(ecommerce_id)

    code, out, _ = call("athm_sync", "--watch", "--interval", "0", "--iterations", "3", "--json")

    passes = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(passes) == 3 and SyncRun.objects.count() == 3
    assert [p["transitions"]["completed"] for p in passes] == [1, 0, 0]
    assert [name for name, _, _ in received] == ["payment_completed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "5"], "only go with --watch"),
        (["--watch", "--interval", "-1"], "--interval must be from 0 to 3600"),
        (["--watch", "--iterations", "0"], "--iterations must be at least 1"),
        (["--watch", "--dry-run"], "--watch does not go with"),
    ],
)
def test_bad_watch_options_are_one_line(athm_settings, args, message):
    code, out, err = call("athm_sync", *args)
    assert code == 2 and out == "" and message in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_real_watch_cleanly(sandbox, tmp_path, signum):
    """A real --watch process with calls in flight: the signal ends it with exit 0, its
    claims released and its runs recorded (the pass it stopped with 128 + the signal)."""
    for _ in range(30):
        ecommerce_id, _ = sandbox.create_payment("5.00")
        Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
    sandbox.set_latency(0.3)
    with first_call(sandbox) as asked:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "athm_sync",
                "--watch",
                "--interval",
                "1",
                "--workers",
                "2",
            ],
            cwd=REPO_ROOT,
            env=child_env(sandbox, tmp_path / "signals.log"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert asked.wait(timeout=30), "the watch never asked ATH Móvil"
            child.send_signal(signum)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()

    assert child.returncode == 0, err
    assert "stopped after 1 pass(es)" in out
    assert not Payment.objects.exclude(claimed_by="").exists()  # claims released
    (run,) = SyncRun.objects.all()
    assert run.finished_at is not None and run.exit_code == 128 + signum
    assert Payment.objects.filter(check_count=0).exists()  # it stopped before the end
    assert "Traceback" not in err


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(athm_settings, caplog: Any):
    sandbox = athm_settings
    for _ in range(6):
        ecommerce_id, _ = sandbox.create_payment("5.00")
        Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
    sandbox.inject_fault("drop", "findPayment", times=1000)  # down for the first passes

    def back_up(report) -> None:
        if report.ath_down:
            sandbox.clear_faults()  # ATH Móvil comes back after the first pass

    with caplog.at_level(logging.WARNING, logger="athm_sync.watch"):
        result = watch_module.watch(
            RunOptions(),
            get_settings(),
            threading.Event(),
            interval=0,
            iterations=3,
            on_report=back_up,
        )

    lines = [r.getMessage() for r in caplog.records if r.name == "athm_sync.watch"]
    assert (result.passes, result.failed_passes) == (3, 1)
    assert len(lines) == 2, lines
    assert "ATH Móvil is failing" in lines[0] and "working again" in lines[1]


def test_one_bad_payment_does_not_slow_the_loop(athm_settings):
    """A payment whose answer is invalid waits alone; the watch keeps its interval."""
    sandbox = athm_settings
    ecommerce_id, _ = sandbox.create_payment("5.00")
    Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
    sandbox.tamper(ecommerce_id, total=-1)
    result = watch_module.watch(
        RunOptions(), get_settings(), threading.Event(), interval=0, iterations=2
    )

    assert (result.passes, result.failed_passes) == (2, 0)


@pytest.mark.parametrize("as_json", [False, True])
def test_watch_on_a_database_it_cannot_use_exits_2_in_one_line(as_json):
    """As every mode does (the default database of tests/settings.py is never migrated): not
    exit 0 after "backing off" from a database that was never usable."""
    result = run_process(
        "athm_sync", "--watch", "--iterations", "1", *(["--json"] if as_json else [])
    )

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("athm_sync: error: the database cannot be used: ") and "migrate" in line
    assert "backing off" not in result.stderr and "Traceback" not in result.stderr
    if as_json:
        assert json.loads(result.stdout) == {
            "exit_code": 2,
            "error": line.removeprefix("athm_sync: error: "),
        }
    else:
        assert result.stdout == ""


def test_watch_v2_prints_the_lines_a_plain_v2_run_prints(sandbox, tmp_path):
    ecommerce_id, _ = sandbox.create_payment("5.00", metadata1="order-5")
    Payment.objects.track(ecommerce_id, total=Decimal("5.00"), metadata_1="order-5")
    sandbox.complete(ecommerce_id)
    env = child_env(sandbox, tmp_path / "signals.log")

    result = run_process(
        "athm_sync", "--watch", "--iterations", "1", "--interval", "0", "-v", "2", env=env
    )

    assert result.returncode == 0, result.stderr
    line = f"COMPLETED  {ecommerce_id}  $5.00  order-5 (signal payment_completed)"
    assert line in result.stdout.splitlines()
    assert "completed: 1" in result.stdout


def test_passes_with_nothing_to_say_print_nothing(sandbox, tmp_path):
    """Only checks that change nothing: a container's log grows with events, not passes."""
    ecommerce_id, _ = sandbox.create_payment("5.00")
    Payment.objects.track(ecommerce_id, total=Decimal("5.00"))
    env = child_env(sandbox, tmp_path / "signals.log")

    result = run_process("athm_sync", "--watch", "--iterations", "3", "--interval", "0", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "athm_sync: --watch done after 3 pass(es)\n" and result.stderr == ""
    assert SyncRun.objects.count() == 3 and Payment.objects.get().check_count == 1
