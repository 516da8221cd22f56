"""llmroute for Django: settings, middleware, view hints, ORM cost records and admin pages."""
