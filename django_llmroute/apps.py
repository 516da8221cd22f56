"""Django app configuration for llmroute."""

from __future__ import annotations

from django.apps import AppConfig


class LLMRouteConfig(AppConfig):
    """The ``django_llmroute`` app: cost records, budgets, API keys and admin reports."""

    name = "django_llmroute"
    label = "django_llmroute"
    verbose_name = "LLM routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks and wire settings, budgets and interception.

        Nothing is built here: the engine comes on first use.
        """
        from . import checks, runtime

        checks.register_checks()
        runtime.install()
