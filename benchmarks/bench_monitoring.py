"""Monitoring: (a) serving throughput with payload logging on vs off, (b) the drift check against
Evidently 0.7's DataDriftPreset.

(a) The random forest of the serving benchmark (breast cancer, 100 trees), trained, registered and
packaged in a scratch ISSUEOPS_HOME (local store), served by two `issueops serve` processes with
the same `--workers`: one with ISSUEOPS_PAYLOAD_LOG=1, one with 0. bench_serving's load generator
(tritonclient HTTP, concurrency 8) alternates between them, BENCH_SERVE_ROUNDS pairs of runs of
BENCH_SECONDS each (in the order on-off, off-on, ..., so that a trend in the machine's load cancels
out), with one row and with the whole test split per request; the median of the pairs' ratios
(logged over not logged) has the target >= 0.9. The logs are read back afterwards: every request sent to
the logging server must be there, and none dropped.

(b) One window of 100,000 rows x 30 features (20 continuous, 4 numeric with at most 5 values,
4 categorical, 2 binary; a few missing values) against a 5,000-row reference (the size of a
reference profile's sample), timed for `issueops.monitoring.drift.detect_drift` and for Evidently's
DataDriftPreset on the same DataFrames (best of BENCH_ROUNDS, Evidently when the `compare` extra is
installed). Target: issueops at most half of Evidently's time. Then 20 generated scenarios (reference
400 to 5,000 rows, so both regimes; shifts of mean, variance, category shares, new categories, of
varied size, on random features): per-feature test and unadjusted verdict compared with Evidently's,
target agreement on at least 95% of the columns; every disagreement is printed. The payload reader's
throughput on the same 100,000 rows (as 1,000 logged requests of 100 rows) is printed too.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SERVE_ROUNDS = int(os.environ.get("BENCH_SERVE_ROUNDS", "6"))
ROWS, REFERENCE_ROWS, SCENARIOS = 100_000, 5_000, 20
TARGET_TIME_RATIO, TARGET_AGREEMENT = 0.5, 0.95
# Evidently's display names of its default tests, as ValueDrift reports the method it chose.
EVIDENTLY_TESTS = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
}
P_VALUE_TESTS = ("ks", "chisquare", "z")


def columns() -> dict[str, str]:
    kinds = {f"num_{i:02d}": "numeric" for i in range(20)}
    kinds.update({f"level_{i}": "numeric" for i in range(4)})
    kinds.update({f"cat_{i}": "categorical" for i in range(4)})
    kinds.update({f"flag_{i}": "categorical" for i in range(2)})
    return kinds


def generate(
    rows: int, rng: np.random.Generator, shifts: dict[str, tuple[str, float]] | None = None
) -> pd.DataFrame:
    """A table of columns(); `shifts` moves named features: (mean|scale|shares|new, size)."""
    shifts = shifts or {}
    data = {}
    for i in range(20):
        name = f"num_{i:02d}"
        kind, size = shifts.get(name, ("", 0.0))
        loc = i + (size if kind == "mean" else 0.0)
        scale = (1 + i % 3) * (1 + size if kind == "scale" else 1.0)
        values = rng.normal(loc, scale, rows) if i % 2 else rng.gamma(2 + i % 4, scale, rows) + loc
        if i % 5 == 0:
            values[rng.random(rows) < 0.01] = np.nan
        data[name] = values
    for i in range(4):
        name = f"level_{i}"
        kind, size = shifts.get(name, ("", 0.0))
        shares = np.array([0.4, 0.3, 0.2, 0.1][: 3 + i % 2])
        if kind == "shares":
            shares = shares * np.linspace(1 - size, 1 + size, len(shares))
        data[name] = rng.choice(np.arange(len(shares), dtype=float), rows, p=shares / shares.sum())
    for i in range(4):
        name = f"cat_{i}"
        kind, size = shifts.get(name, ("", 0.0))
        categories = [f"c{j}" for j in range(6 + i)]
        shares = np.linspace(2, 1, len(categories))
        if kind == "shares":
            shares = shares * np.linspace(1 - size, 1 + size, len(categories))
        values = rng.choice(categories, rows, p=shares / shares.sum()).astype(object)
        if kind == "new":
            values[rng.random(rows) < size] = "unseen"
        data[name] = values
    for i in range(2):
        name = f"flag_{i}"
        kind, size = shifts.get(name, ("", 0.0))
        share = 0.3 + (size if kind == "shares" else 0.0)
        data[name] = np.where(rng.random(rows) < share, "yes", "no").astype(object)
    return pd.DataFrame(data)


def evidently_verdicts(reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str]):
    """{column: (test, score, drift)} from Evidently's DataDriftPreset with its defaults."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c for c, k in kinds.items() if k == "numeric"],
        categorical_columns=[c for c, k in kinds.items() if k != "numeric"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    found = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        test, score = EVIDENTLY_TESTS.get(config["method"], config["method"]), float(metric["value"])
        threshold = float(config["threshold"])
        # Evidently's comparisons: K-S p <= threshold, other p-values <, distances >=.
        drift = (
            (score <= threshold if test == "ks" else score < threshold)
            if test in P_VALUE_TESTS
            else score >= threshold
        )
        found[config["column"]] = (test, score, drift)
    return found


def _evidently_installed() -> bool:
    try:
        import evidently  # noqa: F401
    except ImportError:
        return False
    return True


def serving_throughput_with_payload_logging() -> None:
    """(a) throughput at concurrency 8 with ISSUEOPS_PAYLOAD_LOG=1 against ISSUEOPS_PAYLOAD_LOG=0,
    the same model on two servers in the same run, target >= 0.9."""
    import subprocess
    import sys

    from benchmarks import bench_serving as serving

    model = "bench-rf"
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as home:
        os.environ.update(ISSUEOPS_HOME=home, ISSUEOPS_DATA_ROOTS=str(serving.REPO))
        for name in (
            "MLFLOW_TRACKING_URI",
            "ISSUEOPS_S3_BUCKET",
            "ISSUEOPS_MANUAL_APPROVAL",
            "ISSUEOPS_PAYLOAD_LOG",
        ):
            os.environ.pop(name, None)
        run_id = serving._register(model, serving.MODELS[model])
        store = Path(home) / "store"
        test = pd.read_parquet(store / "processed" / run_id / "test.parquet").drop(columns="target")
        table = test.to_numpy(np.float64)
        servers = {}
        try:
            for rate in ("1", "0"):
                http = serving._free_port()
                servers[rate] = (
                    http,
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "issueops.cli.serving",
                            "serve",
                            "--model",
                            model,
                            "--port",
                            str(http),
                            "--grpc-port",
                            str(serving._free_port()),
                            "--workers",
                            str(serving.WORKERS),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                        cwd=serving.REPO,
                        env={**os.environ, "ISSUEOPS_PAYLOAD_LOG": rate},
                    ),
                )
            for _http, server in servers.values():
                if not server.stdout.readline().startswith("serving"):
                    raise SystemExit("a server did not start")
            print(
                f"   (a) serving {model} at concurrency 8, payload logging on (ISSUEOPS_PAYLOAD_LOG=1) and off (0): "
                f"{serving.WORKERS} HTTP workers each, {serving.CORES} cores shared with the client, "
                f"{SERVE_ROUNDS} pairs of {serving.SECONDS:g} s runs, on-off then off-on"
            )
            sent = 0
            for label, payloads in (
                ("1", [table[i : i + 1] for i in range(len(table))]),
                (str(len(table)), [table]),
            ):
                rates: dict[str, list[float]] = {"1": [], "0": []}
                for pair in range(SERVE_ROUNDS):
                    for rate in ("1", "0") if pair % 2 == 0 else ("0", "1"):
                        throughput, latencies, _cpu = serving._served(
                            f"127.0.0.1:{servers[rate][0]}", model, payloads, "FP64", 8
                        )
                        rates[rate].append(throughput)
                        if rate == "1":
                            sent += len(latencies) + min(3, len(payloads))  # and the warm-up requests
                ratio = float(np.median(np.array(rates["1"]) / np.array(rates["0"])))
                spread = np.array(rates["1"]) / np.array(rates["0"])
                print(
                    f"       {label:>4} row(s)/request: on {np.median(rates['1']):,.0f}/s, off "
                    f"{np.median(rates['0']):,.0f}/s (medians); ratio {ratio:.3f}, median of the pairs "
                    f"({spread.min():.2f}-{spread.max():.2f}) (target >= 0.9: {'meets' if ratio >= 0.9 else 'misses'})"
                )
            dropped = _dropped(servers["1"][0])
        finally:
            for _http, server in servers.values():
                server.terminate()  # SIGTERM: the logging server writes what it holds
                server.wait(timeout=60)
        logged = _logged_requests(store, model)
        print(
            f"       requests sent to the logging server {sent:,}, in the payload log afterwards {logged:,}, "
            f"dropped {dropped:,.0f} (issueops_payload_log_dropped_total)"
        )


def _dropped(port: int) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "issueops_payload_log_dropped_total"
    )


def _logged_requests(store: Path, model: str) -> int:
    from issueops.monitoring.inference_log import read_inference_log
    from issueops.store import LocalStore

    log = read_inference_log(LocalStore(store), model)
    return int(log.keys["request_id"].nunique())


def drift_speed(has_evidently: bool) -> None:
    from issueops.monitoring.drift import detect_drift

    rng = np.random.default_rng(2026)
    kinds = columns()
    reference = generate(REFERENCE_ROWS, rng)
    current = generate(ROWS, rng, {"num_03": ("mean", 0.5), "cat_1": ("new", 0.1)})
    ours = min(_timed(lambda: detect_drift(reference, current, kinds)) for _ in range(ROUNDS))
    print(
        f"   (b) drift check, {ROWS:,} rows x {len(kinds)} features against {REFERENCE_ROWS:,} reference rows: "
        f"issueops {ours:.2f} s (best of {ROUNDS})"
    )
    if not has_evidently:
        print("       Evidently is not installed (pip install -e '.[compare]'): no time ratio")
        return
    theirs = min(_timed(lambda: evidently_verdicts(reference, current, kinds)) for _ in range(ROUNDS))
    print(
        f"       Evidently 0.7 DataDriftPreset, same data: {theirs:.2f} s; ratio issueops/Evidently "
        f"{ours / theirs:.3f} (target <= {TARGET_TIME_RATIO:g})"
    )


def agreement(has_evidently: bool) -> None:
    from issueops.monitoring.drift import Correction, detect_drift

    if not has_evidently:
        print("       per-feature agreement: Evidently is not installed, not compared")
        return
    rng = np.random.default_rng(7)
    kinds = columns()
    names = list(kinds)
    total = same = tests_same = adjusted_changed = 0
    disagreements = []
    for scenario in range(SCENARIOS):
        reference_rows = int(rng.choice([400, 700, 1000, 1500, 3000, 5000]))
        current_rows = int(rng.choice([300, 1000, 3000, 10000]))
        shifts = {}
        for name in rng.choice(names, size=int(rng.integers(0, 12)), replace=False):
            if name.startswith("num"):
                shifts[name] = (str(rng.choice(["mean", "scale"])), float(rng.choice([0.02, 0.1, 0.3, 1.0])))
            elif name.startswith("cat"):
                shifts[name] = (str(rng.choice(["shares", "new"])), float(rng.choice([0.02, 0.1, 0.4])))
            else:
                shifts[name] = ("shares", float(rng.choice([0.01, 0.05, 0.2])))
        reference = generate(reference_rows, rng)
        current = generate(current_rows, rng, shifts)
        report = detect_drift(reference, current, kinds, min_rows=1)
        unadjusted = detect_drift(reference, current, kinds, min_rows=1, correction=Correction.NONE)
        theirs = evidently_verdicts(reference, current, kinds)
        for ours, plain in zip(report.features, unadjusted.features, strict=True):
            test, score, drift = theirs[ours.name]
            total += 1
            tests_same += test == ours.test
            adjusted_changed += ours.drift != ours.drift_unadjusted
            if test == ours.test and drift == plain.drift:
                same += 1
            else:
                ours_score = ours.p_value if ours.p_value is not None else ours.distance
                disagreements.append(
                    f"scenario {scenario} (reference {reference_rows}, current {current_rows}) {ours.name}: "
                    f"issueops {ours.test} {ours_score:.4g} drift={plain.drift}, Evidently {test} {score:.4g} "
                    f"drift={drift}"
                )
    print(
        f"       per-feature verdicts over {SCENARIOS} scenarios: {same}/{total} columns agree "
        f"({same / total:.1%}, target >= {TARGET_AGREEMENT:.0%}); same test chosen for {tests_same}/{total}"
    )
    print(
        f"       (the comparison uses unadjusted p-values, as Evidently does; issueops' default "
        f"Benjamini-Hochberg adjustment changed {adjusted_changed} of the {total} verdicts)"
    )
    for line in disagreements or ["no disagreements"]:
        print(f"       {line}")


def reader_speed() -> None:
    from issueops.monitoring.inference_log import read_inference_log
    from issueops.monitoring.payloads import inference_events, v2_tensors, write_events
    from issueops.store import LocalStore

    rng = np.random.default_rng(3)
    numeric = rng.normal(size=(ROWS, 24)).astype(np.float32)
    text = rng.choice(["a", "b", "c"], size=(ROWS, 6)).astype(object)
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp))
        events = []
        for start in range(0, ROWS, 100):
            rows = slice(start, start + 100)
            request = {"inputs": v2_tensors({"input": numeric[rows], "categorical": text[rows]})}
            response = {"outputs": v2_tensors({"label": rng.integers(0, 2, 100)})}
            events.extend(inference_events("bench", 1, request, response))
        write_events(store, events)
        elapsed = min(_timed(lambda: read_inference_log(store, "bench", 1)) for _ in range(ROUNDS))
    print(
        f"       payload reader: {ROWS:,} logged rows (1,000 requests of 100) read and joined in {elapsed:.2f} s"
    )


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    has_evidently = _evidently_installed()
    serving_throughput_with_payload_logging()
    drift_speed(has_evidently)
    agreement(has_evidently)
    reader_speed()


if __name__ == "__main__":
    main()
