"""Data: sources -> data/raw (fetch) -> deterministic splits in data/prepared (prepare)."""
