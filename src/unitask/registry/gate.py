"""The registry gate: does a new version beat the champion?

Scores are per-task validation main metrics on a 0-1 scale (extractive QA's percent / 100, so that one
tolerance fits every task): the gate selects on validation; test scores are only reported. The new
version is promoted when there is no champion, or when its primary score beats the champion's by
more than `min_improvement` and no task it shares with the champion drops by more than
`max_task_regression`.
"""

from __future__ import annotations

from typing import Any

from unitask.config import Gate
from unitask.errors import ConfigError
from unitask.evaluation.metrics import MAIN_METRIC, unit_score


def task_scores(
    table: dict[str, dict[str, dict[str, float]]], routes: dict[str, str], types: dict[str, str], split: str = "validation"
) -> dict[str, float]:
    """{task: main metric (0-1)} of the model each task is routed to, from one split's table of evaluate's
    comparison (`split` names it in errors)."""
    scores = {}
    for task, model in routes.items():
        if model not in table.get(task, {}):
            raise ConfigError(
                f"reports: no {split} metrics of model '{model}' for task '{task}' in the comparison",
                hint=f"run `unitask evaluate` with '{model}' in evaluate.models after training it",
            )
        main = MAIN_METRIC[types[task]]
        scores[task] = unit_score(types[task], main, table[task][model][main])
    return scores


def primary(scores: dict[str, float], gate: Gate) -> float:
    """The gate's primary score: the mean over tasks, or one task's score."""
    if gate.primary == "mean":
        return sum(scores.values()) / len(scores)
    if gate.primary not in scores:
        raise ConfigError(
            f"register.gate.primary: '{gate.primary}' is neither 'mean' nor a task the model answers",
            hint=f"use mean or one of: {', '.join(sorted(scores))}",
        )
    return scores[gate.primary]


def decide(candidate: dict[str, float], champion: dict[str, float] | None, gate: Gate) -> dict[str, Any]:
    """{"promote", "reason", "candidate", "champion", "deltas", "regressions"}: the decision and its numbers."""
    new = primary(candidate, gate)
    result: dict[str, Any] = {"promote": True, "candidate": {"primary": new, "tasks": candidate}}
    if not champion:  # none yet, or one registered without gate scores (e.g. by hand)
        reason = "no champion yet" if champion is None else "the champion has no recorded scores"
        return result | {"reason": reason, "champion": None, "deltas": {}, "regressions": {}}
    # a champion that lacks the primary task has no primary score: only the per-task check applies
    old = primary(champion, gate) if gate.primary == "mean" or gate.primary in champion else None
    deltas = {t: candidate[t] - champion[t] for t in candidate if t in champion}
    regressions = {t: d for t, d in deltas.items() if d < -gate.max_task_regression}
    result |= {"champion": {"primary": old, "tasks": champion}, "deltas": deltas, "regressions": regressions}
    if regressions:
        worst = min(regressions, key=regressions.get)
        return result | {
            "promote": False,
            "reason": f"{worst} drops by {-regressions[worst]:.4f} (> max_task_regression {gate.max_task_regression})",
        }
    if old is not None and new <= old + gate.min_improvement:
        return result | {
            "promote": False,
            "reason": f"{gate.primary} {new:.4f} does not beat the champion's {old:.4f} by more than {gate.min_improvement}",
        }
    return result | {"reason": f"{gate.primary} {new:.4f} beats the champion's {old if old is None else round(old, 4)}"}
