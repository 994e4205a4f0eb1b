"""rxf adapter for transformers (placeholder package, filled by its issue)."""
