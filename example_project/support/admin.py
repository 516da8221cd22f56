"""Tickets in the admin, next to llmroute's cost pages."""

from __future__ import annotations

from django.contrib import admin

from .models import Ticket


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    """Tickets by status and customer."""

    list_display = ("id", "subject", "customer", "status", "created_at")
    list_filter = ("status",)
    search_fields = ("subject", "customer", "body")
