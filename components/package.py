from kfp.dsl import Model, Output

from components.image import component


@component
def package(run_id: str, repository: Output[Model]) -> str:
    """Export the registered version to ONNX (parity-checked on the test split) and publish its
    Triton repositories (cpu, gpu) to the object store; the local repository is the artifact."""
    import json

    from issueops.packaging.package import package_step

    result = package_step(run_id, repository.path)
    repository.metadata.update(
        {k: result[k] for k in ("model", "version", "servable", "targets") if k in result}
    )
    return json.dumps(result, default=str)
