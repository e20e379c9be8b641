from components.image import component


@component
def write_history(run_id: str) -> str:
    """Commit the run's history markdown and plots (local git repository or GitHub)."""
    import json

    from issueops.pipeline.steps import write_history_step

    return json.dumps(write_history_step(run_id))
