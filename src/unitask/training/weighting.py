"""Loss weighting for multi-task training: one task's batch loss in, the loss to back-propagate out.

- equal: L_i;
- static: w_i * L_i with each task's `tasks.<task>.multitask.weight` (default 1);
- uncertainty (Kendall et al. 2018, as LibMTL's UW): L_i / (2 exp(s_i)) + s_i / 2 with a learned
  log-variance s_i per task (starting at 0), so a task whose loss stays high is weighted down, and
  the s_i / 2 term keeps the weights from collapsing to 0;
- dwa (Dynamic Weight Average, Liu et al. 2019): w_i = K exp(r_i / T) / sum_j exp(r_j / T) with
  r_i = L_i(t-1) / L_i(t-2), the ratio of task i's mean training loss in the last two epochs; a task
  whose loss falls slowly gets more weight. The first two epochs weigh every task 1.

The state lives in parameters and buffers, so a checkpoint holds it and `--resume` restores it.
"""

from __future__ import annotations

import torch
from torch import nn

from unitask.errors import ConfigError
from unitask.training.distributed import global_mean

WEIGHTINGS = ("equal", "static", "uncertainty", "dwa")


class LossWeighting(nn.Module):
    """Equal weights; the base of the others. `forward(task, loss)` weighs task `task`'s loss."""

    kind = "equal"

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)

    def forward(self, task: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def weights(self) -> dict[str, float]:
        """The current weight of each task's loss."""
        return dict.fromkeys(self.names, 1.0)

    def end_epoch(self) -> None:
        """Called at the end of every training epoch."""


class StaticWeighting(LossWeighting):
    kind = "static"

    def __init__(self, names: list[str], weights: dict[str, float]) -> None:
        super().__init__(names)
        self.register_buffer("task_weights", torch.tensor([float(weights.get(n, 1.0)) for n in names]))

    def forward(self, task: int, loss: torch.Tensor) -> torch.Tensor:
        return self.task_weights[task] * loss

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.task_weights.tolist()))


class UncertaintyWeighting(LossWeighting):
    kind = "uncertainty"

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.log_vars = nn.Parameter(torch.zeros(len(names)))

    def forward(self, task: int, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_vars[task].float()
        return loss / (2 * torch.exp(s)) + s / 2

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, (1 / (2 * torch.exp(self.log_vars.detach().float()))).tolist()))


class DynamicWeightAverage(LossWeighting):
    kind = "dwa"

    def __init__(self, names: list[str], temperature: float) -> None:
        super().__init__(names)
        self.temperature = temperature
        k = len(names)
        self.register_buffer("task_weights", torch.ones(k))
        self.register_buffer("loss_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))  # mean losses of epochs t-2, t-1
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def forward(self, task: int, loss: torch.Tensor) -> torch.Tensor:
        if self.training:
            # the global batch's loss (all ranks train task `task` in this step): the same history
            # on every rank and in a checkpoint, as in one process
            self.loss_sum[task] += global_mean(loss.detach().double())
            self.loss_count[task] += 1
        return self.task_weights[task] * loss

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.task_weights.tolist()))

    def end_epoch(self) -> None:
        seen = self.loss_count > 0
        means = torch.where(seen, self.loss_sum / self.loss_count.clamp(min=1), self.history[1])
        self.history.copy_(torch.stack([self.history[1], means]))
        self.epochs += 1
        self.loss_sum.zero_()
        self.loss_count.zero_()
        if int(self.epochs) >= 2 and bool((self.history[0] > 0).all()):
            ratios = self.history[1] / self.history[0]
            self.task_weights.copy_(len(self.names) * torch.softmax(ratios / self.temperature, dim=0).float())


def make_weighting(kind: str, names: list[str], weights: dict[str, float] | None = None, temperature: float = 2.0) -> LossWeighting:
    """The weighting named `kind` for tasks `names`; ConfigError for an unknown name."""
    if kind == "equal":
        return LossWeighting(names)
    if kind == "static":
        return StaticWeighting(names, weights or {})
    if kind == "uncertainty":
        return UncertaintyWeighting(names)
    if kind == "dwa":
        return DynamicWeightAverage(names, temperature)
    raise ConfigError(f"multitask.weighting: unknown weighting '{kind}'", hint=f"use one of {', '.join(WEIGHTINGS)}")
