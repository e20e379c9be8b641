from components.image import component


@component
def rollback(run_id: str) -> str:
    """Keep production as it was before this request: undo what the request promoted."""
    import json

    from issueops.pipeline.steps import rollback_step

    return json.dumps(rollback_step(run_id))
