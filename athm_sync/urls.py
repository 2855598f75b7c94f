"""Include under any prefix: ``path("athm/", include("athm_sync.urls"))``.

The second pattern catches every other path under ``webhook/`` (no trailing slash, extra
segments): without it Django's own 404 logging, or ``APPEND_SLASH`` (a 500 for a POST under
``DEBUG``, whose page shows the URL), would write the webhook secret into logs and pages.

The checkout's pages (docs/checkout.md) live under ``checkout/<id>/<token>/``; any other path
under ``checkout/`` gets the checkout's own 404 page, in the customer's language.
"""

from django.urls import path, re_path

from athm_sync import views
from athm_sync.checkout import views as checkout

app_name = "athm_sync"

urlpatterns = [
    path("webhook/<str:token>/", views.webhook, name="webhook"),
    re_path(r"^webhook/(?P<token>.*)$", views.webhook),
    path("checkout/button/", checkout.button_callback, name="checkout_button"),
    path("checkout/<str:checkout_id>/<str:token>/", checkout.wait, name="checkout_wait"),
    path(
        "checkout/<str:checkout_id>/<str:token>/status/",
        checkout.status,
        name="checkout_status",
    ),
    path(
        "checkout/<str:checkout_id>/<str:token>/cancel/",
        checkout.cancel,
        name="checkout_cancel",
    ),
    path(
        "checkout/<str:checkout_id>/<str:token>/phone/",
        checkout.phone,
        name="checkout_phone",
    ),
    re_path(r"^checkout/", checkout.not_found),
]
