"""unitask: one language model for many NLP tasks."""
