"""A project URLconf that forgot ``include("athm_sync.urls")`` (for the W004 check)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
