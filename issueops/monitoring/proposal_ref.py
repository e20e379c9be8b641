"""How a retraining proposal issue is recognised: its label, its hidden marker, the model it is for.

Kept apart from `proposals` (pandas, numpy, plots) because the bridge reads it: a proposal's
`/approve-retrain`, or its `mlops:train` label, is handled in the process that answers GitHub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from issueops.errors import InvalidInput

PROPOSAL_LABEL = "mlops:retrain-proposal"
APPROVE_COMMAND = "/approve-retrain"
_MARKER = re.compile(
    r"<!-- issueops:retrain-proposal model=([A-Za-z0-9._-]{1,100}) trigger=([a-z]{1,20}) -->"
)


@dataclass(frozen=True)
class ProposalRef:
    """Which model and trigger a proposal issue is for (from its marker)."""

    model: str
    trigger: str


def proposal_marker(model: str, trigger: str) -> str:
    """The hidden first line of a proposal's body: how the issue is found again."""
    return f"<!-- issueops:retrain-proposal model={model} trigger={trigger} -->"


def update_marker(model: str, trigger: str) -> str:
    """The hidden first line of our comments on a proposal (the bridge ignores `<!-- issueops:`)."""
    return f"<!-- issueops:retrain-proposal-update model={model} trigger={trigger} -->"


def proposal_ref(body: str | None) -> ProposalRef | None:
    """The model and trigger of a proposal issue's body; None for any other issue."""
    match = _MARKER.search(body or "")
    return ProposalRef(match.group(1), match.group(2)) if match else None


def check_proposal_spec(body: str | None, model_name: str | None) -> None:
    """InvalidInput when `body` is a proposal whose spec (edited since) names another model than
    the one the proposal is for: retraining it would train, and promote, some other model."""
    ref = proposal_ref(body)
    if ref is not None and model_name != ref.model:
        raise InvalidInput(
            f"The proposal is for model {ref.model}, but its spec has model_name "
            f"{model_name or '(none)'}; put model_name: {ref.model} back to retrain it."
        )
