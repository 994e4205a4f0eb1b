"""rxf adapter for fairseq (placeholder package, filled by its issue)."""
