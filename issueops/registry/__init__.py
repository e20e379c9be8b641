"""The MLflow model registry, split along its seams: names, tracking, lifecycle, audit; and the registry lock."""
