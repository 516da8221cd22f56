"""URLs of the gateway: ``v1/chat/completions``, ``v1/messages``, ``v1/models`` and
``v1/models/<id>``; any other path under ``v1/`` is a 404 in the caller's dialect.

``include("django_llmroute.urls")`` mounts the sync views (right for WSGI and fine
under ASGI); ``include(gateway_urls(asynchronous=True))`` mounts the async ones,
which never hold a thread while an answer streams. The namespace is ``llmroute``.
"""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path, re_path

from . import views

__all__ = ["app_name", "gateway_urls", "urlpatterns"]

app_name = "llmroute"


def _patterns(asynchronous: bool) -> list[URLPattern]:
    if asynchronous:
        chat, messages, models = views.achat_completions, views.amessages, views.amodels
    else:
        chat, messages, models = views.chat_completions, views.messages, views.models
    return [
        path("v1/chat/completions", chat, name="chat-completions"),
        path("v1/messages", messages, name="messages"),
        path("v1/models", models, name="models"),
        path("v1/models/<path:model>", models, name="model"),
        # anything else under v1/: a 404 in the caller's dialect, not Django's page
        re_path(r"^v1/(?P<rest>.*)$", views.not_found, name="not-found"),
    ]


def gateway_urls(*, asynchronous: bool = False) -> tuple[list[Any], str]:
    """The gateway's patterns and namespace, for ``include()``."""
    return _patterns(asynchronous), app_name


urlpatterns = _patterns(False)
