"""Data augmentation of training rows: text noise (word deletion, swap, insertion, span cutoff,
masking) drawn afresh each epoch. Validation and test rows are never augmented."""
