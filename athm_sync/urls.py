"""Include under any prefix: ``path("athm/", include("athm_sync.urls"))``."""

from django.urls import path

from athm_sync import views

app_name = "athm_sync"

urlpatterns = [
    path("webhook/<str:token>/", views.webhook, name="webhook"),
]
