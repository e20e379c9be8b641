from components.image import component


@component
def register(run_id: str) -> str:
    """Log the attempt to MLflow and register a new model version (auto-approved unless manual)."""
    import json

    from issueops.pipeline.steps import register_step

    return json.dumps(register_step(run_id))
