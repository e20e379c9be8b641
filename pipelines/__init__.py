"""The training pipeline as the design names it; defined in issueops.pipeline.graph (the installed
library carries it; this folder is not installed)."""
