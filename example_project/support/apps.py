"""App configuration of the support desk."""

from __future__ import annotations

from django.apps import AppConfig


class SupportConfig(AppConfig):
    """Tickets and the views that summarize, classify and answer them with an LLM."""

    name = "example_project.support"
    label = "support"
    verbose_name = "Support desk"
    default_auto_field = "django.db.models.BigAutoField"
