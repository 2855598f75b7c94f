"""The end-to-end demo behind scripts/demo: a throwaway shop on SQLite against the sandbox.

It starts the sandbox ATH Móvil server, writes a small Django project into a temporary
folder, creates payments the two ways a shop does (server-side through the API, and by the
JavaScript button then registered with ``Payment.objects.track``), plays customers against
the sandbox and prints what the client sees for each payment.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
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


def play(sandbox) -> int:
    from athm_sync.client import ATHMovilClient, ATHMovilError
    from athm_sync.models import Payment

    client = ATHMovilClient.from_settings()
    state = sandbox.state

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

    say("\n2. Customers act in the ATH Móvil app")
    state.complete(str(made["completes"].ecommerce_id))
    say("   order-1: customer confirms, the button captures -> COMPLETED")
    state.cancel(str(made["cancels"].ecommerce_id))
    say("   order-2: customer cancels")
    state.confirm(str(made["confirms, browser goes away"].ecommerce_id))
    say("   order-4: customer confirms, but the browser closes before capturing")
    refunded = str(made["completes, then is refunded"].ecommerce_id)
    state.complete(refunded)
    state.refund(refunded, "5.00", "one item out of stock")
    say("   order-5: completed, then the shop refunds $5.00 in the ATH Business app")
    state.complete(button_id)
    say("   order-6: customer pays through the button")
    state.advance(121)
    say("   ... 121 seconds pass: order-3's 120-second timeout runs out")

    say("\n3. What ATH Móvil says now (findPayment through athm_sync.client)")
    columns = ("order", "remote", "total", "fee", "net", "refunded")
    say("   {:<8} {:<10} {:>7} {:>6} {:>7} {:>8}  reference".format(*columns))
    failures = 0
    for story, payment in made.items():
        try:
            seen = client.find_payment(payment.ecommerce_id)
        except ATHMovilError as error:
            failures += 1
            say(f"   {payment.metadata_1:<8} could not check: {error}")
            continue
        say(
            f"   {seen.metadata_1:<8} {seen.status:<10} {seen.total:>7} {seen.fee:>6} "
            f"{seen.net_amount:>7} {seen.total_refunded_amount:>8}  "
            f"{seen.reference_number or '-'}  ({story})"
        )
    say("\n   order-3 shows CANCEL although nobody cancelled it: findPayment cannot tell")
    say("   cancelled from expired; athm_sync tells them apart by the payment's deadline.")
    say(f"\nSandbox requests: {dict(sorted(state.counts().items()))}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
