"""issueops: a GitHub issue becomes a trained, evaluated, registered and served model.

The package follows the loop, one folder per stage (see the README's Layout):
spec/ → data/ → training/ → evaluation/ → registry/ → packaging/ → serving/, driven by pipeline/,
requested through lifecycle/ and bridge/, reported by reporting/, watched by monitoring/.
Package `__init__` modules hold only a docstring: every import names the defining module.
"""
