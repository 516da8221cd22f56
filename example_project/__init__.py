"""A runnable support-desk site that shows llmroute at work (and a small Starlette app)."""
