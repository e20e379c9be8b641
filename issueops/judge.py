"""judge: pass, retrain or fail, from the metric, the threshold and the attempts used."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from issueops.algorithms import METRICS
from issueops.results import format_value

NEXT_ACTION = {"pass": "register_model", "retrain": "notify_operator", "fail": "rollback"}


@dataclass(frozen=True)
class Judgement:
    decision: str  # pass | retrain | fail
    next_action: str
    message: str
    evaluation_metric: str
    value: float | None
    threshold: float | None
    attempt: int
    max_retry: int

    def to_dict(self) -> dict:
        return asdict(self)


def judge(
    metric: str, value: float | None, threshold: float | None, *, attempt: int, max_retry: int
) -> Judgement:
    """`attempt` counts from 1; a request may train 1 + max_retry times in all."""
    direction = METRICS[metric]

    def verdict(decision: str, message: str) -> Judgement:
        return Judgement(
            decision, NEXT_ACTION[decision], message, metric, value, threshold, attempt, max_retry
        )

    if value is None or (isinstance(value, float) and math.isnan(value)):
        shown = "could not be computed"
    else:
        shown = format_value(value)
    if threshold is None:
        return verdict("pass", f"No evaluation_threshold was set, so the model passes; {metric} = {shown}.")
    relation = ">=" if direction.higher_is_better else "<="
    if shown != "could not be computed" and direction.meets(value, threshold):
        return verdict(
            "pass", f"{metric} {shown} meets the threshold ({relation} {format_value(threshold)})."
        )
    retries_used = attempt - 1
    if retries_used < max_retry:
        left = max_retry - retries_used
        return verdict(
            "retrain",
            f"{metric} {shown} misses the threshold ({relation} {format_value(threshold)}); "
            f"{left} retr{'y' if left == 1 else 'ies'} left: adjust the hyperparameters to retrain.",
        )
    return verdict(
        "fail",
        f"{metric} {shown} misses the threshold ({relation} {format_value(threshold)}) after {attempt} "
        f"attempt{'s' if attempt != 1 else ''}.",
    )
