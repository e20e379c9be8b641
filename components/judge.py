from typing import NamedTuple

from kfp.dsl import Artifact, Input

from components.image import component


@component
def judge(spec_json: str, run_id: str, evaluation: Input[Artifact], attempt: int) -> NamedTuple(
    "JudgeOutputs", [("decision", str), ("message", str)]
):
    """pass, retrain or fail, against the spec's threshold and the attempts left."""
    from collections import namedtuple

    from issueops.pipeline.steps import judge_step

    verdict = judge_step(spec_json, run_id, evaluation.path, attempt)
    return namedtuple("JudgeOutputs", ["decision", "message"])(verdict.decision, verdict.message)
