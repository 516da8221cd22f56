"""Provider wire dialects: one module per dialect behind the interface in ``base``."""
