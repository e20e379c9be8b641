"""The pipeline: the only code that knows KFP, run records and steps.

steps.py       every step function, in run order (promote_step: where production moves)
components.py  the KFP components wrapping the steps; graph.py: the pipeline definition
runs.py        run records, the local runner's result; execution.py: run_local and preflight
prefork.py     forked step workers; policy.py: step retry/timeout policies
rayjob.py      the KubeRay RayJob for reinforcement learning; rayjob_entrypoint.py: what runs in it
"""
