"""``manage.py athm_import_django_athm`` against real django-athm 1.0.2 tables.

A throwaway project in ``tmp_path`` installs both apps; ``migrate`` makes django-athm's tables
with its own migrations and rows are made with its own ORM (``django_athm.models``). Then the
commands run as the real processes a shop runs. Its database is one of its own: a SQLite file
in ``tmp_path``, or, when ``DATABASE_URL`` is set, a PostgreSQL database created for the test
and dropped after it. A receiver app in the project writes every signal of either app to a
file, so "no signal during the import" is read from what a receiver saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from athm_sync.models import Payment
from athm_sync.sandbox import SandboxServer
from tests.commands import ROOT, call, run_process

PACKAGE = "imp_project"

SETTINGS = """\
import os

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "django_athm", "{package}.recorder.RecorderConfig"]  # noqa: F405
if os.environ.get("DATABASE_URL"):
    DATABASES = {{"default": {{**DATABASES["default"], "NAME": {pg_name!r}}}}}  # noqa: F405
else:
    DATABASES = {{
        "default": {{
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": {sqlite!r},
            "OPTIONS": {{"transaction_mode": "IMMEDIATE"}},
        }}
    }}
"""
# The shop's last step: django_athm out of INSTALLED_APPS, its tables kept.
SETTINGS_WITHOUT = """\
from {package}.settings import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "django_athm"]  # noqa: F405
"""
SETTINGS_ATHM_FIRST = """\
from {package}.settings import *  # noqa: F403

others = [app for app in INSTALLED_APPS if app != "django_athm"]  # noqa: F405
INSTALLED_APPS = ["django_athm", *others]
"""

RECORDER = """\
import os

from django.apps import AppConfig

from tests.signal_log.apps import append_line


class RecorderConfig(AppConfig):
    name = "{package}.recorder"
    label = "imp_recorder"

    def ready(self):
        from athm_sync import signals as ours

        try:
            from django_athm import signals as theirs
        except ImportError:
            theirs = None
        path = os.environ["IMPORT_SIGNAL_LOG"]

        def receiver_for(name):
            def receiver(sender, **kwargs):
                payment = kwargs.get("payment")
                refund = kwargs.get("refund")
                amount = f" {{refund.amount}}" if refund is not None else ""
                append_line(path, f"{{name}} {{getattr(payment, 'pk', '-')}}{{amount}}")

            return receiver

        names = ("payment_completed", "payment_cancelled", "payment_expired", "refund_sent")
        for name in (*names, "payment_mismatched"):
            getattr(ours, name).connect(receiver_for(f"athm_sync.{{name}}"), weak=False)
        if theirs is not None:
            for name in names:
                getattr(theirs, name).connect(receiver_for(f"django_athm.{{name}}"), weak=False)
"""

# Run as ``python -m imp_project.tool seed|dump JSON``: rows made with django-athm's own ORM,
# and what athm_sync's tables hold afterwards.
TOOL = """\
import json
import sys
from datetime import timedelta

import django


def seed(spec):
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime
    from django_athm.models import Client, Payment, Refund, WebhookEvent

    from athm_sync.fields import as_stored
    from athm_sync.models import Payment as Ours

    def stored(row):
        # django-athm's fields are Django's own: naive local times under USE_TZ = False.
        if row.get("transaction_date"):
            row["transaction_date"] = as_stored(parse_datetime(row["transaction_date"]))
        return row

    client = Client.objects.create(phone_number="7875550100", name="Ana", email="ana@example.com")
    for given in spec["payments"]:
        given = stored(dict(given))
        refunds = [stored(dict(refund)) for refund in given.pop("refunds", [])]
        age = given.pop("age_seconds", 60)
        if given.pop("with_client", False):
            given["client"] = client
        payment = Payment.objects.create(**given)
        # created_at is auto_now_add: set it as django-athm's history would hold it.
        created = timezone.now() - timedelta(seconds=age)
        Payment.objects.filter(pk=payment.pk).update(created_at=created)
        for refund in refunds:
            Refund.objects.create(payment=payment, **refund)
    WebhookEvent.objects.create(
        idempotency_key="import-test-1",
        event_type="ecommerce_completed",
        remote_ip="127.0.0.1",
        payload={"status": "COMPLETED"},
    )
    for given in spec.get("ours", []):
        Ours.objects.create(**given)
    return {}


def dump(_):
    from athm_sync.models import Payment, PaymentEvent, Refund

    names = [f.attname for f in Payment._meta.concrete_fields]
    return {
        "payments": {
            str(p.pk): {name: getattr(p, name) for name in names} for p in Payment.objects.all()
        },
        "refunds": [
            {
                "payment": str(r.payment_id),
                "amount": r.amount,
                "reference_number": r.reference_number,
                "daily_transaction_id": r.daily_transaction_id,
                "message": r.message,
                "transaction_date": r.transaction_date,
            }
            for r in Refund.objects.order_by("payment_id", "transaction_date")
        ],
        "events": PaymentEvent.objects.count(),
    }


if __name__ == "__main__":
    django.setup()
    result = globals()[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps(result, default=str))
"""


@dataclass
class Project:
    """The throwaway project: its folder, the child's environment, the signal log."""

    path: Path
    env: dict[str, str]
    signal_log: Path

    def django(self, *args: str, settings: str = "settings") -> subprocess.CompletedProcess[str]:
        env = {**self.env, "DJANGO_SETTINGS_MODULE": f"{PACKAGE}.{settings}"}
        return run_process(*args, env=env, timeout=120)

    def tool(self, action: str, spec: Any = None) -> Any:
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", f"{PACKAGE}.tool", action, json.dumps(spec)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def signals(self) -> list[str]:
        return self.signal_log.read_text().splitlines() if self.signal_log.exists() else []


def _postgres_admin():  # pragma: no cover - with DATABASE_URL only
    import psycopg

    parts = urlsplit(os.environ["DATABASE_URL"])
    return psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        dbname="postgres",
        autocommit=True,
    )


@pytest.fixture
def project(tmp_path: Path, sandbox: SandboxServer) -> Iterator[Project]:
    """The project's files and environment; its database exists, empty."""
    package = tmp_path / PACKAGE
    package.mkdir()
    base = urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "athm_sync"
    pg_name = f"{unquote(base)}_dja_{os.getpid()}_{uuid.uuid4().hex[:6]}"[:63]
    files = {
        "__init__.py": "",
        "settings.py": SETTINGS.format(
            package=PACKAGE, pg_name=pg_name, sqlite=str(tmp_path / "shop.sqlite3")
        ),
        "settings_without.py": SETTINGS_WITHOUT.format(package=PACKAGE),
        "settings_athm_first.py": SETTINGS_ATHM_FIRST.format(package=PACKAGE),
        "recorder.py": RECORDER.format(package=PACKAGE),
        "tool.py": TOOL,
    }
    for name, text in files.items():
        (package / name).write_text(text)
    signal_log = tmp_path / "signals.log"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ATHM_TEST_SQLITE", "ATHM_TEST_SIGNAL_LOG", "ATHM_TEST_SQLITE_DEFERRED")
    }
    env.update(
        DJANGO_SETTINGS_MODULE=f"{PACKAGE}.settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
        ATHM_TEST_API_BASE_URL=sandbox.url,
        IMPORT_SIGNAL_LOG=str(signal_log),
    )
    postgres = bool(os.environ.get("DATABASE_URL"))
    if postgres:  # pragma: no cover - with DATABASE_URL only
        with _postgres_admin() as admin:
            admin.execute(f'CREATE DATABASE "{pg_name}"')
    try:
        yield Project(tmp_path, env, signal_log)
    finally:
        if postgres:  # pragma: no cover - with DATABASE_URL only
            with _postgres_admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@pytest.fixture
def migrated(project: Project) -> Project:
    """The project, migrated: athm_sync's tables and django-athm's, by their migrations."""
    done = project.django("migrate", "--no-input", "-v", "0")
    assert done.returncode == 0, done.stderr
    return project


def _completed_in_sandbox(sandbox: SandboxServer, total: str, metadata_1: str) -> dict[str, Any]:
    ecommerce_id, _ = sandbox.create_payment(total, metadata1=metadata_1)
    sandbox.complete(ecommerce_id)
    return sandbox.payment(ecommerce_id)


def test_import_copies_history_once_sends_no_signal_and_open_ones_are_checked_next(
    migrated: Project, sandbox: SandboxServer
):
    # OPEN in django-athm; meanwhile the customer paid: athm_sync's next run must say so.
    paid_since, _ = sandbox.create_payment("12.50", metadata1="order-1")
    # COMPLETED with a refund of 5.00, in ATH Móvil as in django-athm.
    refunded = _completed_in_sandbox(sandbox, "20.00", "order-2")
    sandbox.refund(refunded["ecommerceId"], "5.00", "one item")
    confirmed = str(uuid.uuid4())
    cancelled, expired = str(uuid.uuid4()), str(uuid.uuid4())
    too_long, overdrawn = str(uuid.uuid4()), str(uuid.uuid4())
    ours = str(uuid.uuid4())
    migrated.tool(
        "seed",
        {
            "payments": [
                {"ecommerce_id": paid_since, "status": "OPEN", "total": "12.50",
                 "metadata_1": "order-1", "age_seconds": 30},
                {"ecommerce_id": confirmed, "status": "CONFIRM", "total": "7.00",
                 "metadata_1": None, "metadata_2": None},
                {"ecommerce_id": refunded["ecommerceId"], "status": "COMPLETED",
                 "total": "20.00", "subtotal": "18.00", "tax": "2.00", "fee": "0.60",
                 "net_amount": "19.40", "total_refunded_amount": "5.00",
                 "reference_number": refunded["referenceNumber"],
                 "daily_transaction_id": "0042", "metadata_1": "order-2",
                 "metadata_2": " gift ", "customer_name": "Ana del Pueblo",
                 "customer_phone": "(787) 555-0100", "customer_email": "ana@example.com",
                 "business_name": "Tienda", "message": "gracias", "with_client": True,
                 "transaction_date": "2026-03-04T15:16:17Z", "age_seconds": 3600,
                 "refunds": [{"reference_number": refunded["referenceNumber"],
                              "daily_transaction_id": "0043", "amount": "5.00",
                              "message": "one item",
                              "transaction_date": "2026-03-05T10:00:00Z"}]},
                {"ecommerce_id": cancelled, "status": "CANCEL", "total": "3.00",
                 "age_seconds": 7200},
                {"ecommerce_id": expired, "status": "EXPIRED", "total": "4.00",
                 "age_seconds": 7200},
                {"ecommerce_id": too_long, "status": "COMPLETED", "total": "9.00",
                 "reference_number": "R-LONG", "metadata_1": "x" * 50},
                {"ecommerce_id": overdrawn, "status": "COMPLETED", "total": "10.00",
                 "reference_number": "R-OVER",
                 "refunds": [{"reference_number": "RF-1", "amount": "6.00",
                              "transaction_date": "2026-03-05T10:00:00Z"},
                             {"reference_number": "RF-2", "amount": "6.00",
                              "transaction_date": "2026-03-06T10:00:00Z"}]},
                {"ecommerce_id": ours, "status": "OPEN", "total": "99.00",
                 "metadata_1": "theirs"},
            ],
            # Already followed by athm_sync (a webhook came first): ours is the newer truth.
            "ours": [{"ecommerce_id": ours, "status": "COMPLETED", "total": "15.00",
                      "metadata_1": "ours"}],
        },
    )  # fmt: skip
    before = migrated.tool("dump")

    dry = migrated.django("athm_import_django_athm", "--dry-run")

    assert dry.returncode == 1, dry.stderr  # two payments cannot be imported
    assert dry.stderr == ""
    assert dry.stdout.splitlines()[:3] == [
        "athm_import_django_athm: dry run, nothing written: read 8 payment(s) and 3 refund(s) "
        "from django-athm's tables",
        "  would be imported: 5 payment(s) (1 CANCEL, 1 COMPLETED, 1 CONFIRM, 1 EXPIRED, "
        "1 OPEN) with 1 refund(s)",
        "  already in athm_sync, left as they are: 1 payment(s)",
    ]
    assert migrated.tool("dump") == before

    # The shop's last step first: django_athm is no longer installed, its tables are kept.
    done = migrated.django("athm_import_django_athm", settings="settings_without")

    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == (
        "  imported: 5 payment(s) (1 CANCEL, 1 COMPLETED, 1 CONFIRM, 1 EXPIRED, 1 OPEN) "
        "with 1 refund(s)"
    )
    assert "  not imported: 2 payment(s)" in lines
    assert f"    {too_long}: metadata_1 is 50 characters; athm_sync holds 40" in lines
    assert f"    {overdrawn}: its refunds add up to 12.00, more than its total 10.00" in lines
    assert lines[-2:] == [
        "  not carried over: 1 client(s), 1 webhook event(s), 1 payment message(s)",
        "  signals sent: 0 (history); 2 open payment(s) due: the next athm_sync run checks "
        "them with ATH Móvil",
    ]
    after = migrated.tool("dump")
    stored = after["payments"]
    assert set(stored) == {paid_since, confirmed, refunded["ecommerceId"], cancelled, expired, ours}
    assert stored[ours] == before["payments"][ours]  # left exactly as it was
    completed = stored[refunded["ecommerceId"]]
    assert {k: completed[k] for k in (
        "status", "total", "subtotal", "tax", "fee", "net_amount", "total_refunded_amount",
        "reference_number", "daily_transaction_id", "metadata_1", "metadata_2",
        "customer_name", "customer_phone", "customer_email", "business_name",
        "transaction_date", "auth_token",
    )} == {
        "status": "COMPLETED", "total": "20.00", "subtotal": "18.00", "tax": "2.00",
        "fee": "0.60", "net_amount": "19.40", "total_refunded_amount": "5.00",
        "reference_number": refunded["referenceNumber"], "daily_transaction_id": "0042",
        "metadata_1": "order-2", "metadata_2": "gift", "customer_name": "Ana del Pueblo",
        "customer_phone": "7875550100", "customer_email": "ana@example.com",
        "business_name": "Tienda", "transaction_date": "2026-03-04 15:16:17+00:00",
        "auth_token": "",
    }  # fmt: skip
    assert after["refunds"] == [
        {
            "payment": refunded["ecommerceId"],
            "amount": "5.00",
            "reference_number": refunded["referenceNumber"],
            "daily_transaction_id": "0043",
            "message": "one item",
            "transaction_date": "2026-03-05 10:00:00+00:00",
        }
    ]
    assert stored[confirmed]["status"] == "CONFIRM" and stored[confirmed]["metadata_1"] == ""
    assert {stored[cancelled]["status"], stored[expired]["status"]} == {"CANCEL", "EXPIRED"}
    for open_one in (paid_since, confirmed):  # due at once, never checked yet
        assert stored[open_one]["given_up_at"] is None
        assert stored[open_one]["check_count"] == 0
        due_at = datetime.fromisoformat(stored[open_one]["next_check_at"])
        assert due_at <= datetime.fromisoformat(stored[open_one]["updated_at"])
    assert after["events"] == 0  # nothing in the outbox for the next run to send
    assert migrated.signals() == []

    again = migrated.django("athm_import_django_athm", "--json")

    assert again.returncode == 1, again.stderr
    summary = json.loads(again.stdout)
    assert summary["imported"] == {"payments": 0, "by_status": {}, "refunds": 0, "due": 0}
    assert summary["already_present"] == {"payments": 6, "refunds": 1}
    assert [item["ecommerce_id"] for item in summary["not_imported"]] == sorted(
        [too_long, overdrawn]
    )
    assert summary["signals_sent"] == 0
    assert migrated.tool("dump") == after  # changed nothing, not even updated_at
    assert migrated.signals() == []

    # After the import: a refund of 3.00 more is made in the ATH Business app.
    sandbox.refund(refunded["ecommerceId"], "3.00", "another")
    sandbox.complete(paid_since)

    run = migrated.django("athm_sync", "--json")

    assert run.returncode == 0, run.stderr
    assert sorted(migrated.signals()) == [
        f"athm_sync.payment_completed {paid_since}",
        f"athm_sync.refund_sent {refunded['ecommerceId']} 3.00",  # not the imported 5.00
    ]
    final = migrated.tool("dump")
    assert final["payments"][paid_since]["status"] == "COMPLETED"
    assert final["payments"][refunded["ecommerceId"]]["total_refunded_amount"] == "8.00"
    assert final["payments"][confirmed]["status"] == "CONFIRM"

    rerun = migrated.django("athm_sync", "--json")

    assert rerun.returncode == 0, rerun.stderr
    assert len(migrated.signals()) == 2  # exactly once


def test_without_django_athm_tables_the_import_is_one_line_and_exit_2(db):
    code, out, err = call("athm_import_django_athm")

    assert code == 2
    assert out == ""
    assert err.count("\n") <= 1 and "Traceback" not in err
    assert err.startswith(
        "athm_import_django_athm: error: django-athm's tables athm_payment, athm_refund are "
        "not in the database"
    )
    assert not Payment.objects.exists()


def test_an_unknown_option_is_one_line_and_exit_2():
    done = run_process("athm_import_django_athm", "--dry-rum")

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "athm_import_django_athm: error: unrecognized arguments: --dry-rum\n"


def test_django_athm_listed_first_takes_the_athm_sync_command_and_w005_says_so(
    project: Project,
):
    first = project.django("check", settings="settings_athm_first")
    ours_first = project.django("check")
    theirs = project.django("athm_sync", settings="settings_athm_first")

    assert first.returncode == 0, first.stderr
    assert "athm_sync.W005" in first.stderr
    assert 'List "athm_sync" before "django_athm"' in first.stderr
    assert ours_first.returncode == 0, ours_first.stderr
    assert "W005" not in ours_first.stderr + ours_first.stdout
    # django-athm's report sync, which requires dates, answered instead of ours.
    assert theirs.returncode != 0
    assert "--from-date" in theirs.stderr


def test_after_the_import_django_athm_tables_can_be_dropped_the_documented_way(
    migrated: Project,
):
    open_ids = [str(uuid.uuid4()), str(uuid.uuid4())]  # no reference number yet: NULL
    migrated.tool(
        "seed",
        {"payments": [{"ecommerce_id": e, "status": "OPEN", "total": "5.00"} for e in open_ids]},
    )
    assert migrated.django("athm_import_django_athm").returncode == 0

    plain = migrated.django("migrate", "django_athm", "zero")
    faked = migrated.django("migrate", "django_athm", "0001", "--fake")
    dropped = migrated.django("migrate", "django_athm", "zero")
    gone = migrated.django("athm_import_django_athm", settings="settings_without")

    # django-athm 1.0.2's 0002 cannot be reversed with two NULL reference numbers.
    assert plain.returncode != 0 and "UNIQUE" in plain.stderr.upper()
    assert faked.returncode == 0, faked.stderr
    assert dropped.returncode == 0, dropped.stderr
    assert gone.returncode == 2
    assert "django-athm's tables athm_payment, athm_refund are not in the database" in gone.stderr
    assert sorted(migrated.tool("dump")["payments"]) == sorted(open_ids)  # ours are kept
