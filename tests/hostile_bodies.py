"""Hostile issue bodies and comments (issue 12): the reproducers, and a seeded maker of nasty ones.

Small reproducers are files in tests/data/hostile/; the 64 KiB ones are made here, each just
under the body limit so that the size check does not refuse them before the scans run. Used by
tests/test_hostile.py, tests/test_bridge.py and benchmarks/bench_hostile.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HOSTILE = Path(__file__).resolve().parent / "data" / "hostile"
SIZE = 65_534  # characters: the comment that stalled the bridge for 17.6 s


def _fill(head: str, unit: str, tail: str = "") -> str:
    """`head`, then `unit` repeated, then `tail`: SIZE characters in all."""
    room = SIZE - len(head) - len(tail)
    return head + (unit * (room // len(unit) + 1))[:room] + tail


def floods() -> dict[str, str]:
    """64 KiB bodies whose scans were quadratic: blank or whitespace-only lines, long blank runs."""
    return {
        "fenced block, then blank lines": _fill("```yaml\nalgorithm: x\n```\n", "\n"),
        "fenced block, then blank-looking lines": _fill("```yaml\nalgorithm: x\n```\n", " \t\n"),
        "broken YAML, then blank lines": _fill("algorithm: [\n", "\n"),
        "broken YAML, then whitespace lines": _fill("algorithm: [\n", "   \n"),
        "blank lines, then the key": _fill("note\n", "\n", "\nlearning_type: ["),
        "a fence opener and a long blank run": _fill("```", " ", "x\n"),
        "many fence openers": _fill("", "```\t"),
    }


def comment_floods() -> dict[str, str]:
    """64 KiB comments: a command or the input key before (or after) a flood of blank lines."""
    return {
        "command, then blank lines": _fill("/retrain\n", "\n"),
        "command, then whitespace lines": _fill("/retrain\n", " \n"),
        "chat, then blank lines": _fill("thanks!\n", "\n"),
        "blank lines, then the input key": _fill("", "\n", "\nadjusted_hyperparameters: {max_depth: 4}"),
        "input key, then blank lines": _fill("adjusted_hyperparameters:\n  max_depth: [\n", "\n"),
    }


SPEC_HEAD = "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n"

# name -> (body, a fragment of the one problem it must get)
CRASHERS: dict[str, tuple[str, str]] = {
    "400 nested lists": (SPEC_HEAD + "hyperparameters: " + "[" * 400 + "]" * 400, "nests deeper"),
    "400 nested mappings": (SPEC_HEAD + "hyperparameters: " + "{a: " * 400 + "1" + "}" * 400, "nests deeper"),
    "340 nested block sequences": (
        SPEC_HEAD + "hyperparameters:\n" + "".join(" " * i + "-\n" for i in range(340)),
        "nests deeper",
    ),
    "a 5,000-digit integer": (SPEC_HEAD + "seed: " + "9" * 5000, "too long"),
    "a 5,000-digit hexadecimal integer": (SPEC_HEAD + "seed: 0x" + "f" * 5000, "too long"),
    "an impossible date": ((HOSTILE / "impossible_date.yaml").read_text(), "cannot be read as timestamp"),
    "an empty !!int": (SPEC_HEAD + "seed: !!int ''", "cannot be read as int"),
    "a !!float that is not one": (SPEC_HEAD + "seed: !!float 'x'", "cannot be read as float"),
    "a !!timestamp that is not one": (SPEC_HEAD + "seed: !!timestamp 'x'", "cannot be read as timestamp"),
    "an integer threshold over 1e309": ((HOSTILE / "overflow_threshold.yaml").read_text(), "too long"),
}


def deep_json(levels: int = 100_000) -> bytes:
    """A signed webhook payload that nests `levels` deep (json's decoder recurses once per level)."""
    return b'{"action": "created", "x": ' + b"[" * levels + b"]" * levels + b"}"


# ---------------------------------------------------------------------- fuzzed bodies (seeded)

FIELDS = (
    "learning_type", "task_type", "algorithm", "dataset_id", "target", "environment",
    "hyperparameters", "evaluation_threshold", "evaluation_metric", "max_retry", "model_name",
    "manual_approval", "seed", "test_size", "validation_size", "adjusted_hyperparameters",
)  # fmt: skip
WORDS = (
    "supervised", "unsupervised", "reinforcement", "random_forest", "random_forrest", "xgboost",
    "kmeans", "ppo", "dqn", "classification", "regression", "accuracy", "rmse", "sklearn:iris",
    "sklearn:nope", "CartPole-v1", "n_estimators", "max_depth", "hidden_units", "learning_rate",
    "true", "null", "~", "yes", "0x1F", "0o17", "1_000", "190:20:30", ".inf", ".nan", "-0.0",
    "2024-13-45", "2001-12-14t21:59:43.10-05:00", "1e309", "1.0e+309", "'quoted'", '"dq\\e[31m"',
)  # fmt: skip
NASTY = (
    "&a ", "*a", "<<: ", "!!python/object/apply:os.system ['id']", "!!binary ", "!!set ", "!!omap ",
    "!!int ", "!!float ", "!!timestamp ", "!custom ", "? ", "%YAML 1.1\n", "---\n", "...\n", "|\n",
    ">-\n", "\t", "\x00", "\x1b[2J", "\u202e", "\ufeff", "\r\n", "\r", "```yaml\n", "```\n", "```",
    "#", "{", "}", "[", "]", ",", ":", "- ", '"', "'", "\\", "@", "`", "/retrain", "/rollback 99\n",
)  # fmt: skip


def _scalar(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(WORDS)
    if roll < 0.6:
        return str(rng.choice([-1, 0, 1, 7, 20, 5000, 2**31, 2**63, 10 ** rng.randrange(1, 400)]))
    if roll < 0.7:
        return repr(rng.choice([0.5, 1.5, -3.25, 1e-300, 1e308]))
    if roll < 0.8:
        return "9" * rng.randrange(100, 6000)
    if roll < 0.9:
        return json.dumps("".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(1, 12))))
    return rng.choice(NASTY) + rng.choice(WORDS)


def _value(rng: random.Random, depth: int) -> str:
    roll = rng.random()
    if depth > 2 or roll < 0.6:
        return _scalar(rng)
    if roll < 0.75:
        return "[" + ", ".join(_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))) + "]"
    if roll < 0.9:
        items = (f"{rng.choice(WORDS)}: {_value(rng, depth + 1)}" for _ in range(rng.randrange(0, 4)))
        return "{" + ", ".join(items) + "}"
    opener, closer = rng.choice([("[", "]"), ("{a: ", "}")])
    levels = rng.randrange(10, 2000)
    return opener * levels + "1" + closer * levels


VALID = (
    "learning_type: supervised\nalgorithm: random_forest\ndataset_id: sklearn:iris\n"
    "hyperparameters:\n  n_estimators: 20\n  max_depth: 3\nevaluation_threshold: 0.9\n",
    "learning_type: supervised\nalgorithm: xgboost\ntask_type: regression\ndataset_id: sklearn:diabetes\n"
    "evaluation_metric: rmse\nevaluation_threshold: 60\nmodel_name: diabetes-xgb\n",
    '{"learning_type": "unsupervised", "algorithm": "kmeans", "dataset_id": "sklearn:wine", '
    '"hyperparameters": {"k": 3}}',
    "learning_type: reinforcement\nalgorithm: ppo\nenvironment: CartPole-v1\nmax_retry: 0\n",
)


def fuzzed_body(rng: random.Random) -> str:
    """One nasty body: spec-like lines with wild values, mutated, sometimes fenced or flooded;
    one in five starts from a valid spec (and half of those stay valid)."""
    if rng.random() < 0.2:
        body = rng.choice(VALID)
        if rng.random() < 0.5:
            at = rng.randrange(len(body) + 1)
            body = body[:at] + rng.choice(NASTY + WORDS) + body[at:]
        return f"Please train this.\n\n```yaml\n{body}```\n" if rng.random() < 0.5 else body
    lines = []
    for _ in range(rng.randrange(0, 12)):
        key = rng.choice(FIELDS) if rng.random() < 0.85 else _scalar(rng)
        indent = " " * rng.choice([0, 0, 0, 2, 4])
        lines.append(f"{indent}{key}: {_value(rng, 0)}")
    body = "\n".join(lines)
    for _ in range(rng.randrange(0, 4)):  # mutations
        at = rng.randrange(len(body) + 1)
        body = body[:at] + rng.choice(NASTY) + body[at:]
    shape = rng.random()
    if shape < 0.25:
        body = f"Please train this.\n\n```yaml\n{body}\n```\nthanks"
    elif shape < 0.35:
        body = _fill(body + "\n", rng.choice(["\n", " \n", "\t\n", " "]))
    elif shape < 0.4:
        body = json.dumps({k: v for k, v in zip(FIELDS, lines, strict=False)})
    return body[:SIZE]


def fuzzed_bodies(count: int, seed: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [fuzzed_body(rng) for _ in range(count)]
