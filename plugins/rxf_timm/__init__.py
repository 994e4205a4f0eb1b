"""rxf adapter for timm (placeholder package, filled by its issue)."""
