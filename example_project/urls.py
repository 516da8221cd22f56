"""URLs of the example project: the support desk, the admin and the LLM gateway."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The OpenAI-compatible gateway (/v1/chat/completions, /v1/models), per-user API keys.
    path("", include("django_llmroute.urls")),
    path("", include("example_project.support.urls")),
]
