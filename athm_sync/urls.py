"""Include under any prefix: ``path("athm/", include("athm_sync.urls"))``.

The second pattern catches every other path under ``webhook/`` (no trailing slash, extra
segments): without it Django's own 404 logging, or ``APPEND_SLASH`` (a 500 for a POST under
``DEBUG``, whose page shows the URL), would write the webhook secret into logs and pages.
"""

from django.urls import path, re_path

from athm_sync import views

app_name = "athm_sync"

urlpatterns = [
    path("webhook/<str:token>/", views.webhook, name="webhook"),
    re_path(r"^webhook/(?P<token>.*)$", views.webhook),
]
