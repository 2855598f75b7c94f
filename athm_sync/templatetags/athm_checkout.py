"""``{% load athm_checkout %}``: ``{% athm_button total=... metadata_1=... success_url=... %}``
renders Evertec's ATH Móvil button from values the server signs (docs/checkout.md)."""

from __future__ import annotations

import logging
from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.middleware.csrf import get_token
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

register = template.Library()
logger = logging.getLogger("athm_sync.checkout.button")


@register.simple_tag(takes_context=True)
def athm_button(context: template.Context, **kwargs: Any) -> SafeString:
    """Evertec's button for this order: the ``div`` its script fills, the ``ATHM_Checkout``
    config (from the arguments, as :func:`athm_sync.checkout.start` takes them, plus
    ``theme``), our callback script with the signed order, and Evertec's script.

    Needs the ``request`` context processor (the CSRF token the callback is posted with).
    With an unusable ``ATHM_SYNC`` the page shows "try again in a moment" instead (the
    reason is logged; ``manage.py check`` says how to fix it).
    """
    from athm_sync.checkout import button

    request = context.get("request")
    if request is None:
        raise template.TemplateSyntaxError(
            "{% athm_button %} needs the request: add "
            '"django.template.context_processors.request" to TEMPLATES\' context_processors.'
        )
    try:
        shown = button.render_context(**kwargs)
    except ImproperlyConfigured as error:
        logger.error("ATH Móvil button not shown: %s", error)
        message = _("ATH Móvil cannot be reached right now. Please try again in a moment.")
        return format_html('<p class="athm-error" role="alert">{}</p>', message)
    shown["callback"] = {
        "url": reverse("athm_sync:checkout_button"),
        "signed": shown.pop("signed"),
        "csrf_token": get_token(request),
        "offline_message": _(
            "The connection was lost before the shop heard from ATH Móvil. Check your "
            "connection and reload this page."
        ),
    }
    return render_to_string("athm_sync/checkout/button.html", shown, request=request)
