"""Task sampling for multi-task training: which task each batch comes from, and the rows it comes from.

Every batch holds one task's examples. `task_probabilities` gives the share of batches per task for
each sampler (as jiant's and T5's samplers define them):

- proportional: p_i = n_i / sum_j n_j (n_i: train rows of task i);
- temperature: p_i proportional to min(n_i, cap) ** (1 / T); T = 1 is proportional, a large T uniform;
- uniform: p_i = 1 / K;
- round_robin: the tasks in turn, so over any K consecutive batches each task has exactly one.

`rates` (T5's mixing rates) then multiply chosen tasks' shares, renormalized: more batches for a task
that needs more passes than its size earns it (proportional, temperature, uniform).

`TaskBatchSampler` draws an epoch's batches: the task sequence from (seed, epoch), and within each
task length-grouped batches from a reshuffled pass over its rows whenever the previous pass is used
up, so small tasks repeat and large ones are partly seen, as the sampler wants. Under DDP every
rank draws the same global batches (nothing but (seed, epoch) decides them) and takes its shard of
each: all ranks train the same task in a step, on the rows one process would see.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from unitask.errors import ConfigError

SAMPLERS = ("proportional", "temperature", "uniform", "round_robin")


def task_probabilities(
    sizes: dict[str, int],
    sampler: str,
    temperature: float = 1.0,
    cap: int | None = None,
    rates: dict[str, float] | None = None,
) -> dict[str, float]:
    """The share of batches each task gets under `sampler` (round_robin: its long-run share), each
    task's share multiplied by its rate in `rates` (1 if absent) and renormalized."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"multitask.sampler: unknown sampler '{sampler}'", hint=f"use one of {', '.join(SAMPLERS)}")
    names = list(sizes)
    rates = rates or {}
    unknown = sorted(set(rates) - set(names))
    if unknown:
        raise ConfigError(f"rates: {unknown} are not among the trained tasks {names}", hint="give rates of the trained tasks only")
    counts = np.array([1.0 if sampler in ("uniform", "round_robin") else sizes[n] for n in names], dtype=float)
    if sampler == "temperature":
        if cap is not None:
            counts = np.minimum(counts, cap)
        counts = counts ** (1.0 / temperature)
    counts *= np.array([rates.get(n, 1.0) for n in names])
    return dict(zip(names, (counts / counts.sum()).tolist()))


def steps_per_epoch(sizes: Sequence[int], batch_size: int) -> int:
    """One pass's worth of batches: sum over tasks of ceil(rows / batch_size)."""
    return sum(math.ceil(n / batch_size) for n in sizes)


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s contiguous share of a global batch (sizes differ by at most one row). A batch
    with fewer rows than ranks is first repeated cyclically, so that every rank gets a row."""
    if len(batch) < world_size:
        batch = [batch[i % len(batch)] for i in range(world_size)]
    return batch[len(batch) * rank // world_size : len(batch) * (rank + 1) // world_size]


class TaskBatchSampler(Sampler[list[int]]):
    """Batches of indices into the tasks' rows laid end to end (task k's rows start at
    `sum(lengths[:k])`), each batch from one task. Deterministic given (seed, epoch), so a resumed run
    that skips the first batches of an epoch sees the same ones as an uninterrupted run.
    `batch_size` is the global batch; with `world_size` > 1, rank `rank` yields its shard of each."""

    def __init__(
        self,
        lengths: Sequence[Sequence[int]],
        batch_size: int,
        probabilities: Sequence[float],
        steps: int,
        seed: int,
        round_robin: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not among the {world_size} processes")
        if any(len(task) == 0 for task in lengths):
            raise ValueError("every task needs at least one row")
        self.lengths = [list(task) for task in lengths]
        self.batch_size = batch_size
        self.probabilities = np.asarray(probabilities, dtype=float)
        self.steps = steps
        self.seed = seed
        self.round_robin = round_robin
        self.rank = rank
        self.world_size = world_size
        self.offsets = np.cumsum([0, *(len(task) for task in self.lengths)])[:-1].tolist()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def task_sequence(self, epoch: int | None = None) -> list[int]:
        """The task of each batch of an epoch."""
        epoch = self.epoch if epoch is None else epoch
        k = len(self.lengths)
        if self.round_robin:
            start = (epoch * self.steps) % k  # continue the turn across epochs
            return [(start + i) % k for i in range(self.steps)]
        rng = np.random.default_rng([self.seed, epoch, 0])
        return rng.choice(k, size=self.steps, p=self.probabilities).tolist()

    def _batches(self, task: int) -> Iterator[list[int]]:
        """Endless length-grouped batches of one task, a fresh seeded shuffle per pass."""
        n, offset = len(self.lengths[task]), self.offsets[task]
        for sweep in itertools.count():
            seed = int(np.random.default_rng([self.seed, self.epoch, task + 1, sweep]).integers(2**62))
            generator = torch.Generator().manual_seed(seed)
            order = get_length_grouped_indices(self.lengths[task], min(self.batch_size, n), generator=generator)
            for start in range(0, n, self.batch_size):
                yield [offset + i for i in order[start : start + self.batch_size]]

    def global_batches(self) -> Iterator[list[int]]:
        """The epoch's batches of every rank together, as one process would draw them."""
        streams = [self._batches(task) for task in range(len(self.lengths))]
        for task in self.task_sequence():
            yield next(streams[task])

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield shard(batch, self.rank, self.world_size)

    def fingerprint(self) -> str:
        """What decides the batches (rows' lengths, batch size, shares, steps, seed, epoch): equal on
        every DDP rank, or the ranks would train different tasks in one step."""
        spec = [self.lengths, self.batch_size, self.probabilities.tolist(), self.steps, self.seed, self.round_robin, self.epoch]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def examples_seen(self, batches: int) -> list[int]:
        """Rows drawn per task (by all ranks) in the first `batches` batches of training (epochs 0, 1, ...)."""
        seen = [0] * len(self.lengths)
        epoch = self.epoch
        try:
            for e in itertools.count():
                if batches <= 0:
                    break
                self.set_epoch(e)
                for batch in itertools.islice(self.global_batches(), min(batches, self.steps)):
                    seen[self.task_of(batch[0])] += len(batch)
                batches -= self.steps
        finally:
            self.set_epoch(epoch)
        return seen

    def task_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right")) - 1


# ---- the rows a task batch comes from ----------------------------------------------------------


def sample_rows(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of `limit` rows in their original order (all rows when there are no more)."""
    return frame if limit is None or limit >= len(frame) else frame.sample(n=limit, random_state=seed).sort_index()


class TaskRows(Dataset):
    """Rows of one or more tasks laid end to end; each item carries its task's index as `task_id`."""

    def __init__(self, parts: list[tuple[int, list[dict[str, Any]]]]) -> None:
        self.rows = [{**row, "task_id": task} for task, rows in parts for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class TaskCollator:
    """Pads a batch with its task's collator and adds `task_id`; a batch must hold one task."""

    def __init__(self, collators: list[Any]) -> None:
        self.collators = collators

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        tasks = {f["task_id"] for f in features}
        if len(tasks) != 1:
            raise ValueError(f"a multi-task batch must hold one task's examples, not tasks {sorted(tasks)}")
        (task,) = tasks
        batch = self.collators[task]([{k: v for k, v in f.items() if k != "task_id"} for f in features])
        batch["task_id"] = torch.tensor(task)
        return batch
