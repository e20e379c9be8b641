from components.image import component


@component
def notify(run_id: str, notification_type: str) -> str:
    """Announce the run on GitHub, Slack, Teams, Discord and email as configured; never fails the run."""
    import json

    from issueops.pipeline.steps import notify_step

    return json.dumps(notify_step(run_id, notification_type))
