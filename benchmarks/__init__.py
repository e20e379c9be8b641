"""`make bench`: each entry prints its figures as ratios against a baseline run in the same command."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed_command(command: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds and stdout of a whole process; exits 0/3/4 are results, anything else a failure."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 3, 4):
        raise SystemExit(f"benchmark command failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, done.stdout
