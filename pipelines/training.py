"""The training pipeline: defined in issueops.pipeline.graph. `python -m pipelines.training` compiles it."""

from issueops.pipeline.graph import training_pipeline

__all__ = ["training_pipeline"]

if __name__ == "__main__":
    from kfp import compiler

    compiler.Compiler().compile(training_pipeline, "issueops-training.yaml")
