"""Training stages on transformers' Trainer: pretraining, fine-tuning, multi-task and fusion."""
