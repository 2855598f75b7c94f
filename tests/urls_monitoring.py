"""A shop that asked for the monitoring views: athm/health/ and athm/metrics/, and the health
endpoint on a path of its own with a window of 15 minutes."""

from django.contrib import admin
from django.urls import include, path

from athm_sync.monitoring import views as monitoring

urlpatterns = [
    path("admin/", admin.site.urls),
    path("athm/", include("athm_sync.urls")),
    path("athm/", include("athm_sync.monitoring.urls")),
    path("healthz", monitoring.health, {"max_age": "15m"}),
]
