"""One loaded version of a model: ONNX Runtime session + dynamic batcher, without kserve.

The Triton repository the version was packaged as is what is served: config.pbtxt gives the
tensors, `max_batch_size` and the dynamic-batching delay, model.onnx the graph. kserve stays out
of this module (served.py puts it behind kserve's Model): kserve's gRPC messages and
tritonclient.grpc's share names and cannot be loaded into one process, and the MCP server's
predictions, which load versions here, run beside clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from issueops.errors import InvalidInput
from issueops.packaging import triton
from issueops.packaging.onnx_parity import TensorSpec

log = logging.getLogger("issueops.serving")

NUMPY_DTYPES = {  # the V2 datatypes a served graph takes as numbers
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "BOOL": np.bool_,
    "FP16": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
}
# What a value written out in the request (JSON data, gRPC typed contents) may be, per datatype:
# exactly these Python types, so that true is no 1, "1.5" no number and null no NaN.
EXPLICIT_VALUES = {
    **dict.fromkeys(("FP16", "FP32", "FP64"), ((int, float), "JSON numbers (NaN for a missing value)")),
    **dict.fromkeys(("INT8", "INT32", "INT64", "UINT8"), ((int,), "JSON integers")),
    "BOOL": ((bool,), "true or false"),
    "BYTES": ((str, bytes), "strings"),
}


def explicit_array(name: str, values: list, shape: list[int], datatype: str) -> np.ndarray:
    """The array of a tensor whose values are written out (V2 JSON `data`, flat or nested as its
    shape; gRPC typed contents), or InvalidInput naming the first value that is not of its
    datatype. Nothing is coerced: numpy would read true as 1 and "1.5" or null as numbers."""
    if datatype not in EXPLICIT_VALUES:
        raise InvalidInput(f"Input '{name}' has datatype {datatype}, which this endpoint does not take.")
    kinds, what = EXPLICIT_VALUES[datatype]
    leaves = values
    if values and all(type(v) is list for v in values):  # the nested form: it must be the shape
        leaves = [values]
        for size in shape:
            if not all(type(v) is list and len(v) == size for v in leaves):
                raise InvalidInput(
                    f"Input '{name}' has values that are neither one flat list nor nested as its "
                    f"shape {shape}; give them in row-major order, either way."
                )
            leaves = [item for v in leaves for item in v]
    if not set(map(type, leaves)) <= set(kinds):
        index, value = next((i, v) for i, v in enumerate(leaves) if type(v) not in kinds)
        try:
            shown = json.dumps(value)[:40]
        except (TypeError, ValueError):
            shown = repr(value)[:40]
        raise InvalidInput(f"Input '{name}' holds {shown} at value {index}; {datatype} values are {what}.")
    if len(leaves) != math.prod(shape):
        raise InvalidInput(
            f"Input '{name}' holds {len(leaves)} values; its shape {shape} takes {math.prod(shape)}."
        )
    try:
        return np.array(leaves, dtype=NUMPY_DTYPES.get(datatype, object)).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"Input '{name}' holds a value out of range for {datatype}.") from None


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future


class DynamicBatcher:
    """Requests queued while the model is busy run together as one batch (Triton's scheduler:
    up to max_batch_size rows, waiting at most `delay_s` for more to arrive)."""

    def __init__(self, run, max_batch_size: int, delay_s: float, instances: int = 1):
        self.run, self.max_rows, self.delay_s = run, max(1, max_batch_size), delay_s
        self.instances = max(1, instances)
        self.executor = ThreadPoolExecutor(self.instances, thread_name_prefix="onnxruntime")
        self.queue: asyncio.Queue | None = None
        self.workers: list[asyncio.Task] = []
        self.batches = 0
        self.rows = 0

    async def submit(self, feeds: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.workers = [asyncio.create_task(self._work()) for _ in range(self.instances)]
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(feeds, rows, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            if first is None:
                return
            batch, rows = [first], first.rows
            if self.delay_s and rows < self.max_rows and self.queue.empty():
                # asyncio's timers have millisecond granularity: a sub-millisecond delay becomes
                # one turn of the event loop, which lets requests already read join the batch.
                await asyncio.sleep(self.delay_s if self.delay_s >= 0.002 else 0)
            while rows < self.max_rows and not self.queue.empty():
                item = self.queue.get_nowait()
                if item is None:
                    self.queue.put_nowait(None)
                    break
                if rows + item.rows > self.max_rows:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            feeds = (
                batch[0].feeds
                if len(batch) == 1
                else {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
            )
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, feeds)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            self.batches += 1
            self.rows += rows
            start = 0
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result([out[start : start + pending.rows] for out in outputs])
                start += pending.rows

    async def close(self) -> None:
        """Finish what is queued, then stop (a version being replaced drains its queue)."""
        if self.queue is not None:
            for _ in self.workers:
                await self.queue.put(None)
            await asyncio.gather(*self.workers, return_exceptions=True)
        self.executor.shutdown(wait=False)


@dataclass
class LoadedVersion:
    model: str
    version: int
    session: object
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    batcher: DynamicBatcher
    parameters: dict = field(default_factory=dict)

    @classmethod
    def load(cls, repo: Path, model: str, version: int, *, threads: int = 1) -> LoadedVersion:
        """Load <repo>/<model>/ for serving, or raise InvalidInput saying why it cannot be served."""
        import onnxruntime as ort

        config_path = Path(repo) / model / triton.CONFIG_FILE
        onnx_path = Path(repo) / model / str(version) / triton.ONNX_FILE
        if not config_path.is_file() or not onnx_path.is_file():
            raise InvalidInput(f"Version {version} of {model} lacks {config_path.name} or {onnx_path.name}.")
        config = triton.read_config(config_path)
        inputs, outputs = triton.config_tensors(config)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise InvalidInput(
                f"ONNX Runtime cannot load version {version} of {model}: {str(exc)[:300]}"
            ) from None
        graph_inputs = {i.name for i in session.get_inputs()}
        graph_outputs = {o.name for o in session.get_outputs()}
        if graph_inputs != {t.name for t in inputs} or not {t.name for t in outputs} <= graph_outputs:
            raise InvalidInput(f"config.pbtxt of {model} names tensors its model.onnx does not have.")
        output_names = [t.name for t in outputs]
        instances = sum(g.count for g in config.instance_group) or 1
        delay = (
            config.dynamic_batching.max_queue_delay_microseconds / 1e6
            if config.HasField("dynamic_batching")
            else 0.0
        )

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return session.run(output_names, feeds)

        loaded = cls(
            model,
            int(version),
            session,
            inputs,
            outputs,
            config.max_batch_size or 1,
            DynamicBatcher(run, config.max_batch_size or 1, delay, instances),
            triton.config_parameters(config),
        )
        loaded.smoke_test()
        return loaded

    def smoke_test(self) -> None:
        """One row through the graph, so a version that loads but cannot run is refused too."""
        feeds = {
            t.name: (
                np.full([1, *t.shape[1:]], "", dtype=object)
                if t.datatype == "BYTES"
                else np.zeros([1, *t.shape[1:]], dtype=NUMPY_DTYPES[t.datatype])
            )
            for t in self.inputs
        }
        try:
            outputs = self.batcher.run(feeds)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(
                f"Version {self.version} of {self.model} fails on a sample row: {str(exc)[:300]}"
            ) from None
        if any(len(o) != 1 for o in outputs):
            raise InvalidInput(
                f"Version {self.version} of {self.model} does not answer one row per input row."
            )

    def decode(self, request) -> tuple[dict[str, np.ndarray], int]:
        """A V2 request's tensors (`.inputs` with name, datatype, shape, as_numpy()) as arrays, or
        InvalidInput saying what is wrong (HTTP 400, gRPC INVALID_ARGUMENT)."""
        expected = {t.name: t for t in self.inputs}
        given = {i.name: i for i in request.inputs}

        def describe(t: TensorSpec) -> str:
            return f"'{t.name}' ({t.datatype} {t.shape})"

        unknown = sorted(set(given) - set(expected))
        if unknown:
            raise InvalidInput(
                f"Model {self.model} has no input named {', '.join(map(repr, unknown))}; "
                f"it expects {', '.join(describe(t) for t in self.inputs)}."
            )
        missing = [describe(expected[n]) for n in expected if n not in given]
        if missing:
            raise InvalidInput(f"Model {self.model} needs input {', '.join(missing)}.")
        feeds, rows = {}, None
        for name, spec in expected.items():
            tensor = given[name]
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"Input '{name}' of model {self.model} must be {spec.datatype}, not {tensor.datatype}."
                )
            shape = list(tensor.shape)
            if len(shape) != len(spec.shape) or any(
                w != -1 and w != s for w, s in zip(spec.shape, shape, strict=True)
            ):
                raise InvalidInput(
                    f"Input '{name}' of model {self.model} must have shape {spec.shape} (-1: any batch size), "
                    f"not {shape}."
                )
            if shape[0] < 1 or shape[0] > self.max_batch_size:
                raise InvalidInput(
                    f"Input '{name}' has a batch of {shape[0]} rows; model {self.model} takes 1 to "
                    f"{self.max_batch_size} per request."
                )
            if rows is not None and shape[0] != rows:
                raise InvalidInput(f"Every input of model {self.model} must have the same number of rows.")
            rows = shape[0]
            values = getattr(tensor, "data", None)
            if isinstance(values, list) and values:  # written out, not bytes: check every value
                array = explicit_array(name, values, shape, spec.datatype)
            else:
                try:
                    array = tensor.as_numpy()
                except Exception as exc:  # noqa: BLE001 - a data/shape mismatch in the payload
                    raise InvalidInput(
                        f"Input '{name}' does not hold {shape} {spec.datatype} values: {exc}"
                    ) from None
            if spec.datatype == "BYTES":
                array = np.array(
                    [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()],
                    dtype=object,
                ).reshape(array.shape)
            feeds[name] = array
        return feeds, rows or 0
