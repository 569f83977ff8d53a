"""`finetune.augment`: text augmentation of training rows (off by default; a task sets its own in tasks.<task>.finetune.augment)."""

from __future__ import annotations

from pydantic import Field

from unitask.config.base import Strict


class Augment(Strict):
    """Each epoch, a share of the training rows gets one of the enabled operations (strength > 0),
    drawn at random; validation and test rows are never augmented. All zero: off."""

    rows: float = Field(default=0.5, ge=0, le=1, description="share of training rows augmented each epoch")
    deletion: float = Field(default=0.0, ge=0, lt=1, description="each word is deleted with this probability")
    swap: float = Field(default=0.0, ge=0, le=1, description="swaps of two random words, as a share of the words")
    insertion: float = Field(
        default=0.0, ge=0, le=1, description="copies of the row's own words inserted at random places, as a share of the words"
    )
    cutoff: float = Field(default=0.0, ge=0, lt=1, description="one contiguous span of this share of the words is removed")
    mask: float = Field(
        default=0.0, ge=0, lt=1, description="each word is replaced by the tokenizer's mask token with this probability"
    )

    @property
    def active(self) -> bool:
        return self.rows > 0 and any(v > 0 for v in (self.deletion, self.swap, self.insertion, self.cutoff, self.mask))
