"""What the training stages need under torchrun beyond DDP's gradient averaging: a mean over the
ranks, a check that every rank holds the same value (e.g. `weights_fingerprint`), and rank 0's value
on every rank. In one process they do nothing."""

from __future__ import annotations

from typing import Any

import torch

from unitask.errors import UnitaskError


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over the DDP ranks; every rank must call this at the same point."""
    import torch.distributed as dist

    world = _world()
    if world == 1:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / world


def same_on_every_rank(value: str, what: str, hint: str) -> None:
    """Raise on every rank unless all DDP ranks hold the same `value` (e.g. a fingerprint of `what`)."""
    import torch.distributed as dist

    world = _world()
    if world == 1:
        return
    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    differ = [rank for rank, v in enumerate(values) if v != values[0]]
    if differ:
        raise UnitaskError(f"{what}: the DDP processes disagree: ranks {differ} differ from rank 0", hint=hint)


def from_rank_zero(value: Any) -> Any:
    """Rank 0's `value` on every DDP rank (a picklable object); every rank must call this at the same point."""
    import torch.distributed as dist

    if _world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the trainable parameters' names and bytes: equal on every rank after DDP training,
    which averages the gradients; a process that trained alone ends with weights of its own."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
