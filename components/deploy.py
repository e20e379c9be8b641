from kfp.dsl import Input, Model

from components.image import component


@component
def deploy(run_id: str, repository: Input[Model]) -> str:
    """Serve the packaged version: a KServe InferenceService (a canary until approved) when
    ISSUEOPS_SERVING=kserve, else the local endpoint that follows production; records the endpoint."""
    import json

    from issueops.packaging.package import deploy_step

    return json.dumps(deploy_step(run_id), default=str)
