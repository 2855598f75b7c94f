"""The end-to-end demo behind scripts/demo: a throwaway shop on SQLite against the sandbox.

It starts the sandbox ATH Móvil server, writes a small Django project into a temporary
folder (``_shop.py``), creates payments the two ways a shop does (server-side through the API,
and by the JavaScript button then registered with ``Payment.objects.track``), connects
receivers written as on the signals page, plays customers against the sandbox (completing,
cancelling, letting one expire, confirming and walking away, a refund from the ATH Business
app, a customer whose browser paid $1.00 for a $100.00 order, which is held, not completed),
fast-forwards the clock and runs ``manage.py athm_sync``, printing every transition and
signal, then refunds a payment through the refund API (``athm_sync.refund``). Then it serves
the shop over HTTP, subscribes its webhook URL and lets the sandbox post webhooks: a tracked
payment and one the shop never heard of complete with no run, a forged webhook is rejected, a
second delivery does nothing, and the next run has nothing to poll but the payment still open.
It ends by checking that every signal fired exactly once (exit 1 if not), and removes the
project.

``scripts/demo --serve [--port N]`` instead serves the same throwaway shop with its checkout
(``_checkout_shop.py``) on 127.0.0.1 for a person to click through in a browser: three orders,
each payable with the phone form (the app's waiting page) or with Evertec's JavaScript button
(the sandbox's stand-in for its script), and the sandbox's phone page, the customer's ATH
Móvil app (approve or decline each payment request; ``POST
/sandbox/payments/<id>/expire`` lets one time out now, an expiry in the shop too). It prints
the URLs and every signal; Ctrl-C stops it and removes the project.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import _shop


def say(text: str = "") -> None:
    print(text, flush=True)


def plural(n: int, thing: str) -> str:
    """``no signal``, ``1 signal``, ``2 signals``."""
    return f"no {thing}" if n == 0 else f"{n} {thing}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--serve",
        action="store_true",
        help="serve the shop's checkout on 127.0.0.1 for a person to click through (Ctrl-C stops)",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="the port --serve listens on (default 8000; 0: any)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, not {args.port}")
    if args.serve:
        return serve(args.port)
    with _shop.throwaway_shop("athm-demo-") as (sandbox, folder):
        from django.core.management import call_command

        say(f"Sandbox ATH Móvil server: {sandbox.url}")
        say(f"Throwaway shop project:   {folder} (SQLite)")
        call_command("check", "athm_sync")
        return play(sandbox)


def serve(port: int) -> int:
    """``--serve``: the shop with its checkout over HTTP until Ctrl-C; 1 if the port is taken."""
    import signal
    import threading

    with _shop.throwaway_shop("athm-demo-", urls=_shop.CHECKOUT_URLS) as (sandbox, folder):
        import _checkout_shop

        from athm_sync.sandbox_expiry import move_deadline_to_now

        _checkout_shop.SANDBOX = sandbox
        # The sandbox's expire (POST /sandbox/payments/<id>/expire) moves the shop's deadline
        # too: an expiry, not a cancellation.
        sandbox.state.add_expiry_listener(move_deadline_to_now)
        connect_receivers()
        try:
            server = _shop.DjangoServer(port)
        except OSError as error:
            print(
                f"scripts/demo: cannot listen on {_shop.HOST}:{port}: {error.strerror}",
                file=sys.stderr,
            )
            return 1
        with server:
            say(f"Sandbox ATH Móvil server: {sandbox.url}")
            say(f"Throwaway shop project:   {folder} (SQLite)")
            say(f"\nThe shop:                 {server.url}/")
            say(f"The customer's phone:     {sandbox.phone_url}  (approve or decline)")
            say(
                "\nPick an order and pay with any 10-digit phone, or press ATH Móvil's button "
                f"(it asks {_checkout_shop.PHONE}); then approve or decline the request on the "
                f"phone page. An unanswered one expires after {_checkout_shop.TIMEOUT} s, or "
                f"now with: curl -X POST {sandbox.url}/sandbox/payments/<ecommerceId>/expire "
                f"(the ids: {sandbox.url}/sandbox/payments). Signals are printed here. "
                "Ctrl-C stops."
            )
            # Ctrl-C, and a plain kill (SIGTERM), stop it the same way, removing the project.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                say("\nStopped; the throwaway project is removed.")
    return 0


def connect_receivers() -> list[tuple[str, str]]:
    """Receivers as a shop writes them (the seed signals page); each prints what it got.

    Returns the list they note ``(signal, order)`` in, for the final "exactly once" check. In
    part 4 the webhook view fires them, so they run in the web server's threads.
    """
    from django.dispatch import receiver

    from athm_sync.signals import (
        payment_cancelled,
        payment_completed,
        payment_expired,
        payment_mismatched,
        refund_sent,
    )

    received: list[tuple[str, str]] = []

    def note(signal: str, payment, detail: str = "") -> None:
        received.append((signal, payment.metadata_1))
        say(f"      signal -> {signal:<18} {payment.metadata_1}{detail}")

    @receiver(payment_completed, weak=False)
    def on_payment_completed(sender, payment, **kwargs):
        note("payment_completed", payment, f"  ref {payment.reference_number}")

    @receiver(payment_cancelled, weak=False)
    def on_payment_cancelled(sender, payment, **kwargs):
        note("payment_cancelled", payment)

    @receiver(payment_expired, weak=False)
    def on_payment_expired(sender, payment, **kwargs):
        note("payment_expired", payment)

    @receiver(refund_sent, weak=False)
    def on_refund_sent(sender, refund, payment, **kwargs):
        note("refund_sent", payment, f"  ${refund.amount}")

    @receiver(payment_mismatched, weak=False)
    def on_payment_mismatched(sender, payment, expected_total, remote_total, reason, **kwargs):
        note("payment_mismatched", payment, f"  paid ${remote_total}, order ${expected_total}")

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

    import athm_sync
    from athm_sync import clock
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
    # A browser that lies: it makes a $1.00 payment and hands its id to a $100.00 order.
    cheap_id, _ = state.create_payment(total="1.00", metadata1="order-10", timeout=600)
    made["pays $1.00 for a $100.00 order"] = Payment.objects.track(
        cheap_id, total=Decimal("100.00"), metadata_1="order-10"
    )
    say(f"   tracked from button  {cheap_id}  $100.00  (the browser made it a $1.00 payment)")

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
    state.complete(cheap_id)
    say("   order-10: customer pays the $1.00 payment; the shop expects $100.00")
    say("   ... the clock moves 2 minutes on: order-3's 120-second timeout runs out")

    with time_machine.travel(clock.now() + timedelta(seconds=121), tick=True):
        summary = run_sync("two minutes later")
        again = run_sync("run again: nothing fires twice")

    # A refund through the refund API: its answer (Evertec's documented shape) gives the
    # Refund its own daily id, date and message, with no findPayment after it.
    finds = state.counts().get("findPayment", 0)
    made_refund = athm_sync.refund(made["completes"], "2.50", "wrong size")
    say(
        f"   order-1: the shop refunds ${made_refund.amount} through the API: daily id "
        f"{made_refund.daily_transaction_id}, {made_refund.transaction_date:%Y-%m-%d %H:%M} UTC, "
        f"{made_refund.message!r} "
        f"({plural(state.counts().get('findPayment', 0) - finds, 'findPayment')} after it)"
    )

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
    problems = play_webhooks(sandbox, client, received)

    expected = Counter(
        [("payment_completed", f"order-{n}") for n in (1, 4, 5, 6, 7, 8)]
        + [("payment_cancelled", "order-2"), ("payment_expired", "order-3")]
        + [("refund_sent", "order-5"), ("refund_sent", "order-1")]
        + [("payment_mismatched", "order-10")]
    )
    got = Counter(received)
    problems += [
        f"{signal} for {order} fired {got[signal, order]} times, expected {expected[signal, order]}"
        for signal, order in sorted(expected | got)
        if got[signal, order] != expected[signal, order]
    ]
    if not (made_refund.daily_transaction_id and made_refund.transaction_date):
        problems.append("the API refund lost its daily id or date")
    if again["signals_sent"] or summary["exit_code"]:
        problems.append("the runs two minutes later did not end as they should")
    if problems:
        say()
    for problem in problems:
        say(f"   PROBLEM: {problem}")
    ok = not problems
    say("\nOK: every transition signalled exactly once." if ok else "\nUNEXPECTED RESULT")
    return 0 if ok else 1


def play_webhooks(sandbox, client, received: list[tuple[str, str]]) -> list[str]:
    """Part 4: the webhook fast path over real HTTP; returns what did not go as it should.

    Serves the shop with Django's threaded server, subscribes its webhook URL through the real
    client and turns on the sandbox's automatic webhooks, which the sandbox posts before its
    ``complete()`` returns. Each step prints what was posted, what the view made of it (its
    ``WebhookEvent``) and which signals fired; no ``athm_sync`` run until the last step.
    """
    from athm_sync.models import Payment, WebhookEvent

    state = sandbox.state
    problems: list[str] = []

    def step(eid: str, post, expected: tuple[str, int, int]) -> None:
        """``post()`` posts a webhook for ``eid``; print what the view made of it and check it
        against ``expected``: (the event's outcome, signals fired, findPayment calls)."""
        fired_before, finds_before = len(received), state.counts().get("findPayment", 0)
        delivered_before = len(state.deliveries)
        post()
        delivered = state.deliveries[delivered_before:]
        posted = ", ".join(repr(d["payload"].get("status")) for d in delivered) or "nothing"
        answers = ", ".join(
            f"HTTP {d['status']}" if "status" in d else f"not delivered ({d.get('error')})"
            for d in delivered
        )
        fired = [signal for signal, _ in received[fired_before:]]
        finds = state.counts().get("findPayment", 0) - finds_before
        event = WebhookEvent.objects.filter(ecommerce_id=eid).order_by("-pk").first()
        if event is None:
            verdict = "nothing stored"
        elif event.deliveries > 1:
            verdict = f"{event.outcome}, delivery {event.deliveries}: the stored event answers"
        else:
            verdict = f"{event.outcome}: {event.reason}"
        say(
            f"      POST {posted} -> {answers or 'no answer'}, {verdict} "
            f"({plural(finds, 'findPayment')}, {plural(len(fired), 'signal')})"
        )
        actual = (answers, event and event.outcome, len(fired), finds)
        wanted = ("HTTP 200", *expected)
        if actual != wanted:
            problems.append(
                f"the webhook for {eid} gave (answer, outcome, signals, findPayment calls) "
                f"{actual}, expected {wanted}"
            )

    say("\n4. Webhooks: ATH Móvil posts to the shop over real HTTP; no athm_sync run")
    server = _shop.DjangoServer().start()
    try:
        listener = server.url + _shop.webhook_path()
        client.subscribe_webhooks(listener)
        state.auto_webhooks = True
        say(f"   Django serves the shop at {server.url}")
        shown = listener.replace(_shop.WEBHOOK_SECRET, "<WEBHOOK_SECRET>")
        say(f"   subscribed {shown} (client.subscribe_webhooks)")
        say("   the sandbox's automatic webhooks are on: it posts each change as it happens")

        paid, _ = state.create_payment(total="9.99", metadata1="order-7", timeout=600)
        Payment.objects.track(paid, total=Decimal("9.99"), metadata_1="order-7")
        say("\n   order-7: tracked from the button; the customer pays and ATH Móvil posts at once")
        step(paid, lambda: sandbox.complete(paid), ("applied", 1, 1))

        lost, _ = state.create_payment(total="15.00", metadata1="order-8", timeout=600)
        say("\n   order-8: paid with the button, but the browser died before the shop tracked it")
        step(lost, lambda: sandbox.complete(lost), ("applied", 1, 1))

        forged, _ = state.create_payment(total="99.00", metadata1="order-9", timeout=600)
        Payment.objects.track(forged, total=Decimal("99.00"), metadata_1="order-9")
        payload = sandbox.webhook_payload(forged, "completed")
        say("\n   order-9: tracked, not paid yet; someone posts a forged completion for it")
        step(forged, lambda: sandbox.send_webhook(payload, listener), ("rejected", 0, 1))

        first = next(d["payload"] for d in state.deliveries if d["payload"]["ecommerceId"] == paid)
        say("\n   order-7: ATH Móvil posts the very same webhook a second time")
        step(paid, lambda: sandbox.send_webhook(first, listener), ("applied", 0, 0))
    finally:
        state.auto_webhooks = False
        server.stop()

    after = run_sync("right after: what is left to poll")
    still_open = [p.metadata_1 for p in Payment.objects.filter(status__in=Payment.ACTIVE_STATUSES)]
    say(
        f"   checked only what is still open ({', '.join(still_open) or 'nothing'}); "
        "order-7 and order-8 need no poll: their webhooks settled them"
    )
    say(
        f"\n   signals received in all: {len(received)}; "
        f"webhook events stored: {WebhookEvent.objects.count()}"
    )
    if after["signals_sent"] or after["exit_code"] or after["checked"] != len(still_open):
        problems.append(
            f"the run after the webhooks checked {after['checked']} payments (open: "
            f"{len(still_open)}), sent {after['signals_sent']} signals, exit {after['exit_code']}"
        )
    return problems


if __name__ == "__main__":
    sys.exit(main())
