"""issueops: a GitHub issue becomes a trained, evaluated, registered and served model."""

__version__ = "0.1.0"
