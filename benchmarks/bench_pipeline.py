"""`issueops run` on the breast-cancer random-forest example vs a bare scikit-learn script.

Both are whole processes, timed alternately (A B A B ...) so drift hits both alike. The bare
script does the same work on the same split: load, split, impute+scale, fit the forest, score.
Per-step overhead = (pipeline wall time - time spent inside the steps) / number of steps.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import timed_command

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "random_forest_classification.yaml"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TARGET_RATIO = 3.0

BARE = """
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
spec = yaml.safe_load(open({example!r}))
hp = spec["hyperparameters"]
frame = load_breast_cancer(as_frame=True).frame
rest, test = train_test_split(frame, test_size=0.2, random_state=42, stratify=frame["target"])
train, val = train_test_split(rest, test_size=0.125, random_state=42, stratify=rest["target"])
features = [c for c in frame.columns if c != "target"]
model = Pipeline([
    ("preprocess", ColumnTransformer([("num", Pipeline([("impute", SimpleImputer(strategy="median")),
                                                        ("scale", StandardScaler())]), features)])),
    ("model", RandomForestClassifier(n_estimators=hp["n_estimators"], max_depth=hp["max_depth"],
                                     min_samples_split=hp["min_samples_split"], random_state=42, n_jobs=-1)),
]).fit(train[features], train["target"])
print(model.score(test[features], test["target"]))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "ISSUEOPS_HOME": home, "ISSUEOPS_NOTIFY": "console"}
        run = [sys.executable, "-m", "issueops", "run", str(EXAMPLE), "--json"]
        bare = [sys.executable, "-c", BARE.format(example=str(EXAMPLE))]
        timed_command(run, env)  # warm-up: first-run caches (bytecode, MLflow database)
        pipeline_times, bare_times, overheads, step_count = [], [], [], 0
        for _ in range(ROUNDS):
            elapsed, out = timed_command(run, env)
            result = json.loads(out)
            inside = sum(s["seconds"] or 0 for s in result["steps"])
            step_count = len(result["steps"])
            pipeline_times.append(elapsed)
            overheads.append((elapsed - inside) / step_count)
            bare_times.append(timed_command(bare, env)[0])
    p, b = statistics.median(pipeline_times), statistics.median(bare_times)
    ratios = [a / c for a, c in zip(pipeline_times, bare_times, strict=True)]
    print(
        f"   issueops run (breast_cancer, random_forest): {p:.2f} s median of {ROUNDS} ({step_count} steps, decision "
        f"{result['decision']}, accuracy {result['metrics']['accuracy']:.4f})"
    )
    print(f"   bare scikit-learn script, same split:        {b:.2f} s median")
    print(
        f"   ratio issueops/bare: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; "
        f"target <= {TARGET_RATIO:g})"
    )
    print(
        f"   local-runner overhead per step: {statistics.median(overheads):.2f} s "
        f"(wall time not spent inside a step's own work, divided by {step_count} steps)"
    )


if __name__ == "__main__":
    main()
