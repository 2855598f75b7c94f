"""The customer's phone, played by a person in a browser: the sandbox's ``/phone/`` pages.

``GET /phone/`` lists the phone numbers that received payment requests; ``GET /phone/<digits>/``
shows that number's requests (business, total, items, time left, status) with an Approve and a
Decline form per OPEN one. Approve is what the customer does in the ATH Móvil app (OPEN ->
CONFIRM: the shop then captures it); Decline is the customer cancelling (CANCEL). Both go
through the ledger's own ``confirm`` and ``cancel``. Plain HTML, no script, sized for a phone.
"""

from __future__ import annotations

from html import escape
from typing import Any

from athm_sync.sandbox.errors import SandboxError, unknown_payment
from athm_sync.sandbox.formats import phone_digits
from athm_sync.sandbox.ledger import CANCEL, COMPLETED, CONFIRM, OPEN
from athm_sync.sandbox.state import SandboxState

ACTIONS = ("approve", "decline")

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:28rem;padding:1rem;"
    "background:#f4f4f4;color:#222}h1{font-size:1.3rem}"
    ".push{background:#fff;border-radius:.6rem;padding:.8rem 1rem;margin:.8rem 0;"
    "box-shadow:0 1px 3px #0002}.total{font-size:1.6rem;font-weight:bold}"
    ".status{float:right;font-size:.8rem;padding:.1rem .5rem;border-radius:1rem;background:#ddd}"
    ".OPEN{background:#ffe9a8}.COMPLETED,.CONFIRM{background:#c8f0c8}.CANCEL{background:#f6c6c6}"
    "ul{padding-left:1.2rem;margin:.4rem 0}form{display:inline}"
    "button{font-size:1rem;padding:.6rem 1.2rem;margin:.4rem .4rem 0 0;border:0;"
    "border-radius:.4rem;color:#fff}.approve{background:#e87722}.decline{background:#777}"
    ".muted{color:#666;font-size:.9rem}"
)


def formatted(digits: str) -> str:
    """``7875550142`` as ``(787) 555-0142``; other lengths as they are."""
    if len(digits) == 10:
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    return digits


def page(title: str, body: str) -> str:
    """A whole HTML page around ``body`` (already escaped)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def message_page(title: str, message: str, back: str = "/phone/") -> str:
    """A page that says one thing, with a link back."""
    return page(
        title,
        f'<h1>{escape(title)}</h1><p>{escape(message)}</p><p><a href="{escape(back)}">Back</a></p>',
    )


def index_page(phones: list[dict[str, Any]]) -> str:
    """``GET /phone/``: every number that received a payment request."""
    if phones:
        rows = "".join(
            f'<li><a href="/phone/{entry["phone"]}/">{escape(formatted(entry["phone"]))}</a> '
            f'<span class="muted">{entry["pushes"]} request(s), {entry["open"]} waiting</span>'
            "</li>"
            for entry in phones
        )
        listing = f"<ul>{rows}</ul>"
    else:
        listing = (
            "<p>No phone has received a payment request yet. A payment created with a "
            "<code>phoneNumber</code> appears here.</p>"
        )
    return page("ATH Móvil sandbox: phones", f"<h1>Phones</h1>{listing}")


def _seconds(seconds: int) -> str:
    return f"{seconds // 60}:{seconds % 60:02d}"


def _describe(push: dict[str, Any]) -> str:
    status = push["status"]
    if status == OPEN and not push["current"]:
        return "Sent to another phone since."
    if status == OPEN:
        return f"Time left: {_seconds(push['secondsLeft'])}"
    if status == CONFIRM:
        return "Approved: waiting for the business to complete it."
    if status == COMPLETED:
        return "Paid."
    if status == CANCEL and push["cancelReason"] == "expired":
        return "Expired."
    return "Cancelled."


def _item(item: Any) -> str:
    if not isinstance(item, dict):
        return f"<li>{escape(str(item))}</li>"
    name = escape(str(item.get("name", "")))
    quantity = escape(str(item.get("quantity", "")))
    price = escape(str(item.get("price", "")))
    return f"<li>{quantity} &times; {name} <span class='muted'>${price}</span></li>"


def phone_page(digits: str, pushes: list[dict[str, Any]]) -> str:
    """``GET /phone/<digits>/``: the payment requests this number received, newest first."""
    cards = []
    for push in pushes:
        eid = escape(push["ecommerceId"])
        items = push["items"] if isinstance(push["items"], list) else []
        buttons = ""
        if push["status"] == OPEN and push["current"]:
            buttons = "".join(
                f'<form method="post" action="/phone/{digits}/{eid}/{action}">'
                f'<button class="{action}" type="submit">{action.title()}</button></form>'
                for action in ACTIONS
            )
        cards.append(
            '<div class="push">'
            f'<span class="status {escape(push["status"])}">{escape(push["status"])}</span>'
            f"<div>{escape(push['businessName'])}</div>"
            f'<div class="total">${escape(push["total"])}</div>'
            + (f"<ul>{''.join(_item(item) for item in items)}</ul>" if items else "")
            + f'<div class="muted">{escape(_describe(push))}</div>'
            f"{buttons}"
            f'<div class="muted"><small>{eid}</small></div></div>'
        )
    title = f"ATH Móvil: {formatted(digits)}"
    return page(
        title,
        f"<h1>{escape(formatted(digits))}</h1>"
        '<p class="muted"><a href="">Refresh</a> · <a href="/phone/">All phones</a></p>'
        + "".join(cards),
    )


def act(state: SandboxState, digits: str, ecommerce_id: str, action: str) -> str | None:
    """Approve or decline one payment request on this phone, as its customer would.

    Returns None when done, or a sentence saying why nothing changed (it is no longer OPEN, or
    it was sent to another phone since). Raises the unknown-payment error when this phone never
    received it.
    """
    push = next((p for p in state.pushes(digits) if p["ecommerceId"] == ecommerce_id), None)
    if push is None:
        raise unknown_payment(ecommerce_id)
    if push["status"] != OPEN:
        return f"This payment is no longer waiting for you: {_describe(push)} Nothing changed."
    if not push["current"]:
        return "This payment request was sent to another phone: approve it there."
    try:
        if action == "approve":
            state.confirm(ecommerce_id, phone=formatted(digits))
        else:
            state.cancel(ecommerce_id)
    except SandboxError as exc:  # it changed between the look and the action
        return f"{exc.message}. Nothing changed."
    return None


def clean_digits(value: str) -> str | None:
    """The digits of a phone path segment, or None when it is not a phone number."""
    digits = phone_digits(value)
    return digits if digits and digits == value else None
