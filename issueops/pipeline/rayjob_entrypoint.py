"""The KubeRay RayJob's entrypoint: `python -m issueops.pipeline.rayjob_entrypoint --run-id RUN`
runs the same prepare and train steps on the Ray cluster it is started in, and records them in the store.

It lives in pipeline/ (it runs steps), not in training/ (fitting only): that breaks the old cycle
steps → training → reinforcement → steps. issueops.pipeline.rayjob writes the RayJob that starts it;
that module's own `python -m` prints one for a spec file, so the two entrypoints stay apart.
"""

from __future__ import annotations

import logging
from pathlib import Path

from issueops.config import Settings
from issueops.pipeline.steps import prepare_data_step, train_step
from issueops.training.reinforcement.ray import console_logging

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Prepare and train one run on the Ray cluster this process runs in; record it in the store."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m issueops.pipeline.rayjob_entrypoint", description=main.__doc__
    )
    settings = Settings.from_env()
    parser.add_argument("--run-id", default=settings.run_id, required=False)
    parser.add_argument("--spec-json", default=settings.spec_json)
    parser.add_argument("--work-dir", default=None, help="where processed/ and model/ are written")
    args = parser.parse_args(argv)
    if not args.run_id or not args.spec_json:
        parser.error("--run-id and --spec-json (or ISSUEOPS_RUN_ID and ISSUEOPS_SPEC_JSON) are required")
    console_logging()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="issueops-rayjob-"))
    prepare_data_step(args.spec_json, args.run_id, str(work / "processed"))
    manifest = train_step(args.spec_json, args.run_id, str(work / "processed"), str(work / "model"))
    log.info("run %s trained: %s", args.run_id, manifest.get("stop_reason"))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
