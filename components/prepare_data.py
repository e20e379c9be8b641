from kfp.dsl import Dataset, Output

from components.image import component


@component
def prepare_data(spec_json: str, run_id: str, processed: Output[Dataset]):
    """Validate the dataset, split it (stratified, seeded) and fit the preprocessing on train."""
    from issueops.pipeline.steps import prepare_data_step

    metadata = prepare_data_step(spec_json, run_id, processed.path)
    processed.metadata.update({k: metadata[k] for k in ("num_samples", "num_features") if k in metadata})
