"""Seeded, pure text augmentations over word lists, with aligned tags for token classification.

Every operation works on *units*: a single word, or for tagged rows a whole BIO entity span (B-x
followed by its I-x words), so a span is deleted, moved or copied whole and the tags stay aligned
with the words and in valid BIO order. Each returns new lists and never changes its inputs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

Unit = tuple[list[str], list[str] | None]  # words of one unit and their tags (None: untagged text)


def units(words: Sequence[str], tags: Sequence[str] | None = None) -> list[Unit]:
    """Split a row into units: one per word, except that an I- tag joins its word to the unit before."""
    if tags is not None and len(tags) != len(words):
        raise ValueError(f"{len(words)} words but {len(tags)} tags")
    out: list[Unit] = []
    for i, word in enumerate(words):
        if tags is not None and tags[i].startswith("I-") and out:
            out[-1][0].append(word)
            out[-1][1].append(tags[i])  # type: ignore[union-attr]
        else:
            out.append(([word], None if tags is None else [tags[i]]))
    return out


def join(parts: Sequence[Unit], tagged: bool) -> tuple[list[str], list[str] | None]:
    """Units back to (words, tags)."""
    words = [w for unit_words, _ in parts for w in unit_words]
    return words, [t for _, unit_tags in parts for t in unit_tags or []] if tagged else None


def _count(share: float, n: int) -> int:
    """How many edits a share of `n` units asks for: at least one when the share is positive (EDA)."""
    return max(1, round(share * n)) if share > 0 and n else 0


def delete(parts: list[Unit], p: float, rng: random.Random) -> list[Unit]:
    """Drop each unit with probability `p`; one random unit survives when all would go."""
    kept = [u for u in parts if rng.random() >= p]
    return kept or ([rng.choice(parts)] if parts else [])


def swap(parts: list[Unit], share: float, rng: random.Random) -> list[Unit]:
    """Swap two random units, `share` x units times (at least once)."""
    out = list(parts)
    if len(out) < 2:
        return out
    for _ in range(_count(share, len(out))):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def insert(parts: list[Unit], share: float, rng: random.Random) -> list[Unit]:
    """Insert copies of random units of the same row at random places, `share` x units times."""
    out = list(parts)
    for _ in range(_count(share, len(parts))):
        words, tags = rng.choice(parts)
        out.insert(rng.randint(0, len(out)), (list(words), None if tags is None else list(tags)))
    return out


def cutoff(parts: list[Unit], share: float, rng: random.Random) -> list[Unit]:
    """Remove one contiguous run of `share` x units (at least one, never all)."""
    n = min(_count(share, len(parts)), len(parts) - 1)
    if n <= 0:
        return list(parts)
    start = rng.randint(0, len(parts) - n)
    return parts[:start] + parts[start + n :]


def mask(parts: list[Unit], p: float, rng: random.Random, token: str) -> list[Unit]:
    """Replace each word by `token` with probability `p`; tags are kept (one word, one tag)."""
    return [([token if rng.random() < p else w for w in words], tags) for words, tags in parts]


OPERATIONS = ("deletion", "swap", "insertion", "cutoff", "mask")


def operation(name: str, strength: float, mask_token: str | None) -> Callable[[list[Unit], random.Random], list[Unit]]:
    """The unit-list operation called `name` (one of OPERATIONS) at this strength."""
    if name == "deletion":
        return lambda parts, rng: delete(parts, strength, rng)
    if name == "swap":
        return lambda parts, rng: swap(parts, strength, rng)
    if name == "insertion":
        return lambda parts, rng: insert(parts, strength, rng)
    if name == "cutoff":
        return lambda parts, rng: cutoff(parts, strength, rng)
    if name == "mask":
        if mask_token is None:
            raise ValueError("masking needs a mask token")
        return lambda parts, rng: mask(parts, strength, rng, mask_token)
    raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(OPERATIONS)}")


def augment_words(
    words: Sequence[str],
    tags: Sequence[str] | None,
    op: Callable[[list[Unit], random.Random], list[Unit]],
    rng: random.Random,
) -> tuple[list[str], list[str] | None]:
    """Apply `op` to one row's words (and tags); returns new (words, tags) of equal length."""
    if not words:
        return list(words), None if tags is None else list(tags)
    return join(op(units(words, tags), rng), tags is not None)
