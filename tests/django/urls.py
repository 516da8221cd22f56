"""URLs of the test project: the admin and a view that records a call then fails."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("record-then-fail/", views.record_then_fail),
    path("record-ok/", views.record_ok),
]
