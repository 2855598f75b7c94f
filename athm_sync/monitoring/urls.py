"""The health endpoint and the metrics, for shops that ask for them (docs/operations.md)::

    path("athm/", include("athm_sync.monitoring.urls"))  # athm/health/ and athm/metrics/

``include("athm_sync.urls")`` serves neither. Route one view alone, or with another window,
with ``path("healthz", health, {"max_age": "15m"})`` (``athm_sync.monitoring.views``).
"""

from django.urls import path

from athm_sync.monitoring import views

app_name = "athm_sync_monitoring"

urlpatterns = [
    path("health/", views.health, name="health"),
    path("metrics/", views.metrics, name="metrics"),
]
