"""The end-to-end demo behind scripts/demo: a throwaway shop on SQLite against the sandbox.

It starts the sandbox ATH Móvil server, writes a small Django project into a temporary
folder, creates payments the two ways a shop does (server-side through the API, and by the
JavaScript button then registered with ``Payment.objects.track``), connects receivers written
as on the signals page, plays customers against the sandbox (completing, cancelling, letting
one expire, confirming and walking away, a refund from the ATH Business app), fast-forwards
the clock and runs ``manage.py athm_sync``, printing every transition and signal.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

# The sandbox's tokens, not secrets.
PUBLIC_TOKEN = "demo-public-token"  # noqa: S105
PRIVATE_TOKEN = "demo-private-token"  # noqa: S105

SETTINGS = """\
SECRET_KEY = "demo-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "athm_sync"]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": {database!r},
        "OPTIONS": {{"transaction_mode": "IMMEDIATE"}},
    }}
}}
ATHM_SYNC = {{
    "PUBLIC_TOKEN": {public!r},
    "PRIVATE_TOKEN": {private!r},
    "API_BASE_URL": {url!r},
    "REPORT_BASE_URL": {url!r},
}}
"""


def write_project(folder: Path, sandbox_url: str) -> None:
    """A Django project of two files that uses athm_sync on SQLite and the sandbox."""
    (folder / "demo_shop").mkdir()
    (folder / "demo_shop" / "__init__.py").write_text("")
    (folder / "demo_shop" / "settings.py").write_text(
        SETTINGS.format(
            database=str(folder / "db.sqlite3"),
            public=PUBLIC_TOKEN,
            private=PRIVATE_TOKEN,
            url=sandbox_url,
        )
    )
    (folder / "manage.py").write_text(
        textwrap.dedent(
            """\
            import os, sys
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_shop.settings")
            from django.core.management import execute_from_command_line
            execute_from_command_line(sys.argv)
            """
        )
    )


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    from athm_sync.sandbox import SandboxServer

    sandbox = SandboxServer(public_token=PUBLIC_TOKEN, private_token=PRIVATE_TOKEN).start()
    folder = Path(tempfile.mkdtemp(prefix="athm-demo-"))
    try:
        write_project(folder, sandbox.url)
        sys.path.insert(0, str(folder))
        os.environ["DJANGO_SETTINGS_MODULE"] = "demo_shop.settings"
        import django
        from django.core.management import call_command

        django.setup()
        say(f"Sandbox ATH Móvil server: {sandbox.url}")
        say(f"Throwaway shop project:   {folder} (SQLite)")
        call_command("migrate", verbosity=0)
        call_command("check", "athm_sync")
        return play(sandbox)
    finally:
        sandbox.stop()


def connect_receivers() -> list[str]:
    """Receivers as a shop writes them (the seed signals page); each prints what it got."""
    from django.dispatch import receiver

    from athm_sync.signals import (
        payment_cancelled,
        payment_completed,
        payment_expired,
        refund_sent,
    )

    received: list[str] = []

    def note(line: str) -> None:
        received.append(line)
        say(f"      signal -> {line}")

    @receiver(payment_completed, weak=False)
    def on_payment_completed(sender, payment, **kwargs):
        note(f"payment_completed  {payment.metadata_1}  ref {payment.reference_number}")

    @receiver(payment_cancelled, weak=False)
    def on_payment_cancelled(sender, payment, **kwargs):
        note(f"payment_cancelled  {payment.metadata_1}")

    @receiver(payment_expired, weak=False)
    def on_payment_expired(sender, payment, **kwargs):
        note(f"payment_expired    {payment.metadata_1}")

    @receiver(refund_sent, weak=False)
    def on_refund_sent(sender, refund, payment, **kwargs):
        note(f"refund_sent        {payment.metadata_1}  ${refund.amount}")

    return received


def run_sync(title: str, *options: str) -> dict:
    """``manage.py athm_sync --json`` in this process; prints and returns its summary."""
    import io
    import json

    from django.core.management import call_command

    say(f"\n$ python manage.py athm_sync {' '.join(options)}   # {title}")
    out = io.StringIO()
    try:
        call_command("athm_sync", "--json", *options, stdout=out)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    summary = json.loads(out.getvalue())
    changed = {kind: n for kind, n in summary["transitions"].items() if n}
    say(
        f"   checked {summary['checked']}, unchanged {summary['unchanged']}, "
        f"transitions {changed or 'none'}, captured {summary['captured']}, "
        f"signals {summary['signals_sent']}, errors {len(summary['errors'])}, exit {code}"
    )
    return summary


def play(sandbox) -> int:
    import json

    import time_machine
    from django.utils import timezone

    from athm_sync.client import ATHMovilClient
    from athm_sync.models import Payment, PaymentEvent, SyncRun

    client = ATHMovilClient.from_settings()
    state = sandbox.state
    received = connect_receivers()

    say("\n1. The shop creates payments")
    made = {}
    for story, total, timeout in (
        ("completes", "12.50", 600),
        ("cancels", "8.00", 600),
        ("lets it expire", "5.25", 120),
        ("confirms, browser goes away", "40.00", 600),
        ("completes, then is refunded", "20.00", 600),
    ):
        payment = Payment.objects.create_via_api(
            total=Decimal(total),
            metadata_1=f"order-{len(made) + 1}",
            timeout=timeout,
            client=client,
        )
        made[story] = payment
        say(f"   created server-side  {payment.ecommerce_id}  ${payment.total:>6}  ({story})")
    # The JavaScript button creates its payment in the browser; the shop registers it.
    button_id, _ = state.create_payment(total="3.75", metadata1="order-6", timeout=600)
    made["pays with the button"] = Payment.objects.track(
        button_id, total=Decimal("3.75"), metadata_1="order-6"
    )
    say(f"   tracked from button  {button_id}  $  3.75  (pays with the button)")

    run_sync("nobody has paid yet")

    say("\n2. Customers act in the ATH Móvil app")
    state.complete(str(made["completes"].ecommerce_id))
    say("   order-1: customer confirms, the button captures it")
    state.cancel(str(made["cancels"].ecommerce_id))
    say("   order-2: customer cancels")
    state.confirm(str(made["confirms, browser goes away"].ecommerce_id))
    say("   order-4: customer confirms, but the browser closes before capturing")
    refunded = str(made["completes, then is refunded"].ecommerce_id)
    state.complete(refunded)
    state.refund(refunded, "5.00", "one item out of stock")
    say("   order-5: customer pays; the shop refunds $5.00 in the ATH Business app")
    state.complete(button_id)
    say("   order-6: customer pays through the button")
    say("   ... the clock moves 2 minutes on: order-3's 120-second timeout runs out")

    with time_machine.travel(timezone.now() + timedelta(seconds=121), tick=True):
        summary = run_sync("two minutes later")
        again = run_sync("run again: nothing fires twice")

    say("\n3. Where each payment ended")
    for story, payment in made.items():
        payment.refresh_from_db()
        say(
            f"   {payment.metadata_1:<8} {payment.status:<10} ${payment.total:>6}  "
            f"fee {payment.fee}  refunded {payment.total_refunded_amount}  ({story})"
        )
    say(f"\n   signals received: {len(received)}; events recorded: {PaymentEvent.objects.count()}")
    say(f"   runs recorded: {SyncRun.objects.count()}")
    say(f"   sandbox requests: {dict(sorted((k, v) for k, v in state.counts().items() if v))}")
    say("\nThe --json summary of the run two minutes later:")
    say(json.dumps(summary, indent=2))
    expected = 7  # 4 completed, 1 cancelled, 1 expired, 1 refund
    ok = len(received) == expected and again["signals_sent"] == 0 and summary["exit_code"] == 0
    say("\nOK: every transition signalled exactly once." if ok else "\nUNEXPECTED RESULT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
