"""A decoder causal LM trained with LoRA on every text task at once, text to text (`unitask llm`)."""
