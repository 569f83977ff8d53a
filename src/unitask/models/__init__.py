"""Models: the shared encoder (backbone), task heads, the multi-task model, fusion."""
