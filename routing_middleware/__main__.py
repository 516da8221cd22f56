"""``python -m routing_middleware`` runs the ``llmroute`` command line."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
