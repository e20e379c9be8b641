from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import component


@component
def evaluate(
    spec_json: str,
    run_id: str,
    processed: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    evaluation: Output[Artifact],
):
    """Metrics on the held-out test split, results.json and plots."""
    from issueops.pipeline.steps import evaluate_step

    result = evaluate_step(spec_json, run_id, processed.path, model.path, evaluation.path)
    for name, value in result.metrics.items():
        if isinstance(value, (int, float)) and value == value:
            metrics.log_metric(name, float(value))
    if "confusion_matrix" in result.details:
        classification_metrics.log_confusion_matrix(
            result.details["classes"], result.details["confusion_matrix"]
        )
    curves = list(result.details.get("roc", {}).values())
    if len(curves) == 1:  # KFP's ROC artifact holds one curve: the binary case
        classification_metrics.log_roc_curve(curves[0]["fpr"], curves[0]["tpr"], curves[0]["thresholds"])
