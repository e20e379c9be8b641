"""Serving: `issueops serve` through tritonclient HTTP against in-process ONNX Runtime, same inputs.

A random forest (breast cancer, 100 trees) and an MLP (wine) are trained, registered and
packaged in a scratch ISSUEOPS_HOME; the server runs in its own process. Each request carries one
row (online inference) or the whole test split (a batch); concurrency 1 and 8 (tritonclient's
own connection pool, one greenlet per concurrent client). The server runs one HTTP worker per core
(`issueops serve --workers`, BENCH_SERVE_WORKERS to change it). The baseline runs the same packaged
model.onnx in this process on the same rows, at the same concurrency (threads).

The client's own CPU time per request is printed too: client and server share this machine's
cores, so cores / client CPU per request is what no server could exceed here.

Targets: at concurrency 8 at least 50% of the in-process throughput; p99 under 5 ms at
concurrency 1 (one row per request).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
CORES = os.cpu_count() or 1
WORKERS = int(os.environ.get("BENCH_SERVE_WORKERS", min(CORES, 8)))
MODELS = {
    "bench-rf": "algorithm: random_forest\ndataset_id: sklearn:breast_cancer\nhyperparameters: {n_estimators: 100, max_depth: 10}",
    "bench-mlp": "algorithm: neural_network\ndataset_id: sklearn:wine\nhyperparameters: {epochs: 30}",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _register(name: str, body: str) -> str:
    """Train, evaluate, register and package through the pipeline's own steps; returns the run id."""
    from issueops.config import Settings
    from issueops.pipeline.execution import start_request
    from issueops.pipeline.runs import new_run_id
    from issueops.pipeline.steps import (
        deploy_step,
        evaluate_step,
        judge_step,
        package_step,
        prepare_data_step,
        promote_step,
        register_step,
        train_step,
    )
    from issueops.spec.body import parse_issue_body
    from issueops.store import open_store

    spec = parse_issue_body(
        f"learning_type: supervised\nmodel_name: {name}\nevaluation_threshold: 0.5\n{body}"
    )
    settings = Settings.from_env()
    run_id = start_request(open_store(settings), spec, run_id=new_run_id())
    work, spec_json = settings.home / "work" / run_id, spec.to_json()
    prepare_data_step(spec_json, run_id, str(work / "p"))
    train_step(spec_json, run_id, str(work / "p"), str(work / "m"))
    evaluate_step(spec_json, run_id, str(work / "p"), str(work / "m"), str(work / "e"))
    judge_step(spec_json, run_id, str(work / "e"), 1)
    register_step(run_id)
    package_step(run_id)
    promote_step(run_id)
    deploy_step(run_id)  # production moved in promote, once the version was packaged, as in the pipeline
    return run_id


def _served(url: str, model: str, payloads: list[np.ndarray], datatype: str, concurrency: int):
    """(requests/s, latencies in ms, client CPU seconds per request) through tritonclient HTTP at
    this concurrency for SECONDS."""
    import gevent
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, concurrency=concurrency)
    latencies: list[float] = []
    deadline = time.perf_counter() + SECONDS

    def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            rows = payloads[i % len(payloads)]
            tensor = httpclient.InferInput("input", list(rows.shape), datatype)
            tensor.set_data_from_numpy(rows)
            started = time.perf_counter()
            client.infer(model, [tensor])
            latencies.append((time.perf_counter() - started) * 1000)
            i += concurrency

    for rows in payloads[:3]:  # warm the connections and the server
        tensor = httpclient.InferInput("input", list(rows.shape), datatype)
        tensor.set_data_from_numpy(rows)
        client.infer(model, [tensor])
    started, cpu_started = time.perf_counter(), time.process_time()
    gevent.joinall([gevent.spawn(worker, k) for k in range(concurrency)])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    client.close()
    return len(latencies) / elapsed, latencies, cpu / len(latencies)


def _in_process(onnx_path: Path, payloads: list[np.ndarray], concurrency: int) -> float:
    """requests/s of ONNX Runtime called directly, same rows, `concurrency` threads for SECONDS."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    deadline = time.perf_counter() + SECONDS
    counts = [0] * concurrency

    def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            session.run(None, {"input": payloads[i % len(payloads)]})
            counts[offset] += 1
            i += concurrency

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return sum(counts) / (time.perf_counter() - started)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as home:
        os.environ.update(ISSUEOPS_HOME=home, ISSUEOPS_DATA_ROOTS=str(REPO))
        for name in ("MLFLOW_TRACKING_URI", "ISSUEOPS_S3_BUCKET", "ISSUEOPS_MANUAL_APPROVAL"):
            os.environ.pop(name, None)
        runs = {name: _register(name, body) for name, body in MODELS.items()}
        http, grpc = _free_port(), _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "issueops.cli.serving",
                "serve",
                "--port",
                str(http),
                "--grpc-port",
                str(grpc),
                "--workers",
                str(WORKERS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        try:
            ready = server.stdout.readline().strip()
            if not ready.startswith("serving"):
                raise SystemExit(f"the server did not start: {ready!r}")
            print(f"   {ready} ({WORKERS} HTTP workers, {CORES} cores shared with the client)")
            print(
                f"   {'model':<10} {'rows':>4} {'conc':>4} {'served/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'client us':>9} {'in-proc/s':>10} {'ratio':>6}"
            )
            verdicts = []
            for name, run_id in runs.items():
                store = Path(home) / "store"
                test = pd.read_parquet(store / "processed" / run_id / "test.parquet").drop(columns="target")
                onnx_path = store / "triton" / name / "1" / "cpu" / name / "1" / "model.onnx"
                datatype, dtype = ("FP32", np.float32) if "mlp" in name else ("FP64", np.float64)
                table = test.to_numpy(dtype)
                for label, payloads in (
                    ("1", [table[i : i + 1] for i in range(len(table))]),
                    (str(len(table)), [table]),
                ):
                    for concurrency in (1, 8):
                        rate, latencies, client_cpu = _served(
                            f"127.0.0.1:{http}", name, payloads, datatype, concurrency
                        )
                        baseline = _in_process(onnx_path, payloads, concurrency)
                        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
                        ratio = rate / baseline
                        print(
                            f"   {name:<10} {label:>4} {concurrency:>4} {rate:>9.0f} {p50:>7.2f} {p99:>7.2f} "
                            f"{client_cpu * 1e6:>9.0f} {baseline:>10.0f} {ratio:>6.1%}"
                        )
                        if label == "1" and concurrency == 1:
                            verdicts.append(
                                f"{name}: p99 at concurrency 1 {p99:.2f} ms "
                                f"({'meets' if p99 < 5 else 'misses'} < 5 ms)"
                            )
                        if concurrency == 8:
                            ceiling = CORES / client_cpu
                            verdicts.append(
                                f"{name}, {label} row(s)/request: concurrency 8 at {ratio:.1%} of in-process "
                                f"({'meets' if ratio >= 0.5 else 'misses'} >= 50%); the client alone "
                                f"allows at most {ceiling:,.0f}/s on {CORES} cores ({ceiling / baseline:.0%})"
                            )
            for line in verdicts:
                print(f"   {line}")
        finally:
            server.terminate()
            server.wait(timeout=20)


if __name__ == "__main__":
    main()
