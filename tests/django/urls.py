"""URLs of the test project: the admin and a view that records a call then fails."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from django_llmroute.urls import gateway_urls

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("record-then-fail/", views.record_then_fail),
    path("record-ok/", views.record_ok),
    path("llm/", include("django_llmroute.urls")),
    path("llm-async/", include((gateway_urls(asynchronous=True)[0], "llmroute-async"))),
    path("it/", include(("tests.django.views_integration", "it"))),
]
