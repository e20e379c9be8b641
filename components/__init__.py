"""The KFP components, one module per step as the design names them; each is defined in
issueops.pipeline.components (the installed library carries them; this folder is not installed)."""
