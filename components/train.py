from kfp.dsl import Dataset, Input, Model, Output

from components.image import component


@component
def train(spec_json: str, run_id: str, processed: Input[Dataset], model: Output[Model]):
    """Train the spec's algorithm; the model and its preprocessing are saved together."""
    from issueops.pipeline.steps import train_step

    manifest = train_step(spec_json, run_id, processed.path, model.path)
    model.metadata.update({"algorithm": manifest["algorithm"], "framework": manifest.get("format", "")})
