"""The demo admin account, for a local offline site only (``make demo`` prints it)."""

from __future__ import annotations

__all__ = ["ADMIN_PASSWORD", "ADMIN_USERNAME"]

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "llmroute-demo"
