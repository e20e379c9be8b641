"""JSON log lines (ISSUEOPS_LOG_JSON=1): the fields a log pipeline filters by, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from issueops.logs import JsonFormatter, log_context, register_secret
from tests.conftest import REPO

FIELDS = [
    "timestamp",
    "level",
    "service",
    "execution_id",
    "issue_number",
    "training_job_name",
    "message",
    "duration_ms",
    "status",
]


@pytest.fixture
def json_lines():
    """A logger whose records are formatted as `issueops bridge` would write them; its lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("issueops-bridge"))
    logger = logging.getLogger("issueops.test-json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_each_line_has_every_field_null_when_unknown(json_lines):
    logger, lines = json_lines
    logger.info("polling %d issues", 3)
    [line] = lines()
    assert list(line)[: len(FIELDS)] == FIELDS
    assert line["level"] == "INFO" and line["service"] == "issueops-bridge"
    assert line["message"] == "polling 3 issues"
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]
    assert all(line[name] is None for name in FIELDS[3:] if name != "message")


def test_fields_come_from_the_context_and_extra_and_secrets_stay_masked(json_lines):
    logger, lines = json_lines
    register_secret("s3cr3t-value-for-logs")
    with log_context(
        execution_id="train-20260301-000000-abcd", issue_number=42, training_job_name="rayjob-x"
    ):
        logger.warning(
            "step train failed with s3cr3t-value-for-logs", extra={"duration_ms": 1250.5, "status": "error"}
        )
        with log_context(status="retrying"):
            logger.info("again")
    logger.info("after")
    failed, again, after = lines()
    assert failed["execution_id"] == "train-20260301-000000-abcd" and failed["issue_number"] == 42
    assert failed["training_job_name"] == "rayjob-x"
    assert failed["duration_ms"] == 1250.5 and failed["status"] == "error"
    assert "s3cr3t-value-for-logs" not in json.dumps(failed) and "***" in failed["message"]
    assert again["status"] == "retrying" and again["issue_number"] == 42 and again["duration_ms"] is None
    assert after["execution_id"] is None and after["status"] is None


def test_an_unknown_context_field_is_refused():
    with pytest.raises(TypeError, match="run_id"), log_context(run_id="x"):
        pass


def test_a_process_writes_json_lines_naming_its_service(tmp_path):
    """A process set up as `issueops serve` sets up logging with ISSUEOPS_LOG_JSON=1: each stderr
    line is one JSON object naming the service; a secret from the environment never shows."""
    script = (
        "import logging, sys\n"
        "from issueops.config import Settings\n"
        "from issueops.logs import configure_logging, log_context\n"
        "Settings.from_env()\n"
        "configure_logging('INFO', json_lines=True, service='issueops-serve')\n"
        "with log_context(issue_number=9):\n"
        "    logging.getLogger('issueops.serving').warning('token ghp_abcdefghijklmnopqrstuvwxyz0123 used')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "ISSUEOPS_HOME": str(tmp_path),
            "GITHUB_TOKEN": "ghp_abcdefghijklmnopqrstuvwxyz0123",
        },
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [line] = [json.loads(text) for text in done.stderr.splitlines()]
    assert line["service"] == "issueops-serve" and line["issue_number"] == 9 and line["level"] == "WARNING"
    assert "ghp_abcdefghijklmnopqrstuvwxyz0123" not in done.stderr
