"""judge: pass, retrain or fail, from the metric, the threshold, the attempts used and, when a
version is in production, that champion's score on the same data.

A new version passes when it meets the threshold AND is not worse than production by more than
the spec's `max_regression` (default 0, in the metric's units, whichever way the metric points).
One that loses to production is treated like one below the threshold: with retries left the
operator is asked for adjusted hyperparameters (`retrain`), else the request fails; either way
production stays as it is. A champion that cannot be scored is named, and the threshold decides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from issueops.results import Decision, format_value
from issueops.spec.catalog import METRICS

if TYPE_CHECKING:
    from issueops.evaluation.supervised import ChampionScore

NEXT_ACTION = {
    Decision.PASS: "register_model",
    Decision.RETRAIN: "notify_operator",
    Decision.FAIL: "rollback",
}
_TIE = 1e-9  # metrics are rounded to 6 decimals: closer than this is equal


@dataclass(frozen=True)
class Judgement:
    decision: Decision  # pass, retrain or fail
    next_action: str
    message: str
    evaluation_metric: str
    value: float | None
    threshold: float | None
    attempt: int
    max_retry: int
    # production's version on the same data (ChampionScore.to_dict()) with max_regression and
    # `lost` (worse than production by more than max_regression); None without a production version
    champion: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def judge(
    metric: str,
    value: float | None,
    threshold: float | None,
    *,
    attempt: int,
    max_retry: int,
    champion: ChampionScore | None = None,
    max_regression: float | None = None,
) -> Judgement:
    """`attempt` counts from 1; a request may train 1 + max_retry times in all."""
    direction = METRICS[metric]
    margin = max_regression or 0.0
    computed = not (value is None or (isinstance(value, float) and math.isnan(value)))
    shown = format_value(value) if computed else "could not be computed"
    meets = threshold is None or (computed and direction.meets(value, threshold))
    worse_by = None
    if computed and champion is not None and champion.value is not None:
        worse_by = (champion.value - value) if direction.higher_is_better else (value - champion.value)
    lost = worse_by is not None and worse_by > margin + _TIE
    record = None
    if champion is not None:
        record = {**champion.to_dict(), "max_regression": margin, "lost": lost}

    def verdict(decision: Decision, message: str) -> Judgement:
        return Judgement(
            decision, NEXT_ACTION[decision], message, metric, value, threshold, attempt, max_retry, record
        )

    against = _against_threshold(metric, shown, threshold, direction.higher_is_better, meets)
    if worse_by is not None:
        against += _against_production(champion, worse_by, margin, lost, threshold is None, meets)
    note = ""
    if champion is not None and worse_by is None:
        note = " " + (
            f"{_name(champion)} could not be scored on this attempt's data ({champion.reason}), so the "
            "threshold alone decided."
            if champion.value is None
            else f"{_name(champion)} scores {format_value(champion.value)} on {champion.scored_on}."
        )
    if meets and not lost:
        if threshold is None and worse_by is None:
            return verdict(
                Decision.PASS,
                f"No evaluation_threshold was set, so the model passes; {metric} = {shown}.{note}",
            )
        return verdict(Decision.PASS, f"{against}.{note}")
    retries_used = attempt - 1
    if retries_used < max_retry:
        left = max_retry - retries_used
        retry = f"{left} retr{'y' if left == 1 else 'ies'} left: adjust the hyperparameters to retrain."
        return verdict(
            Decision.RETRAIN, f"{against}; {retry}{note}" if worse_by is None else f"{against}. {retry}"
        )
    attempts = f"{attempt} attempt{'s' if attempt != 1 else ''}"
    if worse_by is None:
        return verdict(Decision.FAIL, f"{against} after {attempts}.{note}")
    return verdict(Decision.FAIL, f"{against}. No retries are left after {attempts}.")


def _name(champion: ChampionScore) -> str:
    return f"Production v{champion.version}" if champion.version is not None else "Production"


def _against_threshold(metric: str, shown: str, threshold: float | None, higher: bool, meets: bool) -> str:
    if threshold is None:
        return f"No evaluation_threshold was set; {metric} is {shown}"
    relation = ">=" if higher else "<="
    return f"{metric} {shown} {'meets' if meets else 'misses'} the threshold ({relation} {format_value(threshold)})"


def _against_production(
    champion: ChampionScore, worse_by: float, margin: float, lost: bool, no_threshold: bool, meets: bool
) -> str:
    """The clause that follows the threshold's: how the attempt compares with production."""
    theirs = f"{_name(champion).lower()} ({format_value(champion.value)} on {champion.scored_on})"
    tolerance = f"max_regression {format_value(margin)}"
    joint = "," if no_threshold else (" but" if meets and lost else " and")
    if lost:
        return (
            f"{joint} it is worse than {theirs} by {format_value(worse_by)}, more than {tolerance} allows, "
            "so it is not promoted"
        )
    if worse_by > _TIE:
        return f"{joint} it is within {tolerance} of {theirs}"
    return f"{joint} it is not worse than {theirs}"
