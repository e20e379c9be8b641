"""Reading the payload logs back: every logged inference of a model in a window, request joined
to response, as the feature frame and outputs that drift and performance checks read."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from issueops.errors import NotFound
from issueops.store import ObjectStore

from .payloads import DAY_FOLDER, REQUEST_TYPE, RESPONSE_TYPE, event_time, payload_prefix


class NeverServed(NotFound):
    """No inference of this model (version) was ever logged."""


@dataclass
class InferenceLog:
    """Logged inferences of a model in a time window: one row per input row, aligned by position.

    `keys` holds request_id, row (its index in the request's batch), time (UTC) and version;
    `features` the request's input tensors as columns named after the model's features;
    `outputs` each response tensor as an array with one entry per row.
    """

    model: str
    version: int | None
    keys: pd.DataFrame
    features: pd.DataFrame
    outputs: dict[str, np.ndarray]
    files: int = 0
    skipped_files: list[str] = field(default_factory=list)  # files not read in full, "key: why"
    skipped_lines: int = 0
    unanswered: int = 0  # requests whose response was not logged (failed, or not yet written)
    since: datetime | None = None
    until: datetime | None = None

    @property
    def rows(self) -> int:
        return len(self.keys)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "files": self.files,
            "skipped_files": len(self.skipped_files),
            "skipped_lines": self.skipped_lines,
            "unanswered_requests": self.unanswered,
        }


def logged_versions(store: ObjectStore, model: str) -> list[int]:
    """The versions of `model` with payload logs."""
    versions = set()
    base = payload_prefix(model) + "/"
    for key in store.list(payload_prefix(model)):
        parts = key[len(base) :].split("/")
        if len(parts) == 3 and parts[0].isdigit() and DAY_FOLDER.match(parts[1]):
            versions.add(int(parts[0]))
    return sorted(versions)


def read_inference_log(
    store: ObjectStore,
    model: str,
    version: int | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    feature_columns: Mapping[str, Sequence[str]] | None = None,
) -> InferenceLog:
    """Every logged inference of `model` (one version, or all) between `since` and `until`, joined
    request to response by id. Truncated or corrupt files and lines are skipped and counted.

    `feature_columns` maps input tensor names to feature names (the export's feature_columns,
    e.g. {"input": [...numeric], "categorical": [...]}); without it columns are <tensor>_<i>.
    Raises NeverServed when the model (version) has no payload logs at all.
    """
    prefix = payload_prefix(model, version)
    keys = [k for k in store.list(prefix) if _is_payload_key(k, model)]
    if not keys:
        which = f"version {version} of {model}" if version is not None else model
        raise NeverServed(
            f"{which[0].upper()}{which[1:]} has never been served: no inference logs under {prefix}/."
        )
    first_day = since.astimezone(UTC).date() if since else None
    # A response can land in the next day's folder (its request came just before midnight).
    last_day = until.astimezone(UTC).date() + timedelta(days=1) if until else None
    reader = _Reader(model, since, until)
    for key in keys:
        day = date.fromisoformat(key.split("/")[3])
        if (first_day and day < first_day) or (last_day and day > last_day):
            continue
        reader.read_file(store, key)
    return reader.joined(version, feature_columns or {})


def _is_payload_key(key: str, model: str) -> bool:
    parts = key.split("/")
    return (
        len(parts) == 5
        and parts[1] == model
        and parts[2].isdigit()
        and bool(DAY_FOLDER.match(parts[3]))
        and parts[4].endswith((".jsonl", ".jsonl.gz"))
    )


class _Reader:
    def __init__(self, model: str, since: datetime | None, until: datetime | None):
        self.model, self.since, self.until = model, since, until
        self.requests: dict[str, list[tuple[datetime, int, dict]]] = {}
        self.responses: dict[str, list[dict]] = {}
        self.files = 0
        self.skipped_files: list[str] = []
        self.skipped_lines = 0

    def read_file(self, store: ObjectStore, key: str) -> None:
        version = int(key.split("/")[2])
        try:
            raw = store.get_bytes(key)
        except NotFound:
            return  # removed since it was listed
        lines, problem, cut = _lines(raw, key.endswith(".gz"))
        self.files += 1
        self.skipped_lines += int(cut)
        if problem:
            self.skipped_files.append(f"{key}: {problem}")
        for line in lines:
            if line.strip():
                self._add(line, version)

    def _add(self, line: bytes, version: int) -> None:
        try:
            event = json.loads(line)
            kind, event_id, data = event["type"], str(event["id"]), event["data"]
        except (ValueError, KeyError, TypeError):
            self.skipped_lines += 1
            return
        if not isinstance(data, dict):
            self.skipped_lines += 1
            return
        if kind == REQUEST_TYPE:
            moment = event_time(event)
            if moment is None:
                self.skipped_lines += 1
                return
            if (self.since and moment < self.since) or (self.until and moment >= self.until):
                return
            self.requests.setdefault(event_id, []).append((moment, version, data))
        elif kind == RESPONSE_TYPE:
            self.responses.setdefault(event_id, []).append(data)
        else:
            self.skipped_lines += 1

    def joined(self, version: int | None, columns: Mapping[str, Sequence[str]]) -> InferenceLog:
        key_rows: list[tuple[str, int, datetime, int]] = []
        feature_parts: dict[str, list[np.ndarray]] = {}
        output_parts: dict[str, list[np.ndarray]] = {}
        unanswered = 0
        for event_id, requests in self.requests.items():
            responses = self.responses.get(event_id, [])
            unanswered += max(0, len(requests) - len(responses))
            for (moment, logged_version, request), response in zip(requests, responses, strict=False):
                inputs = _tensors(request.get("inputs"))
                outputs = _tensors(response.get("outputs"))
                rows = _batch_rows(inputs, outputs)
                if rows is None:
                    self.skipped_lines += 1
                    continue
                for name, array in inputs.items():
                    feature_parts.setdefault(name, []).append(array.reshape(rows, -1))
                for name, array in outputs.items():
                    output_parts.setdefault(name, []).append(array)
                key_rows.extend((event_id, row, moment, logged_version) for row in range(rows))
        keys = pd.DataFrame(key_rows, columns=["request_id", "row", "time", "version"])
        keys["time"] = pd.to_datetime(keys["time"], utc=True)
        features = _feature_frame(feature_parts, columns, len(keys))
        outputs = {}
        for name, parts in output_parts.items():
            if sum(len(p) for p in parts) == len(keys) and len({p.shape[1:] for p in parts}) == 1:
                outputs[name] = np.concatenate(parts)
        order = np.argsort(keys["time"].to_numpy(), kind="stable")  # files are not in time order
        keys = keys.iloc[order].reset_index(drop=True)
        features = features.iloc[order].reset_index(drop=True)
        outputs = {name: array[order] for name, array in outputs.items()}
        return InferenceLog(
            model=self.model,
            version=version,
            keys=keys,
            features=features,
            outputs=outputs,
            files=self.files,
            skipped_files=self.skipped_files,
            skipped_lines=self.skipped_lines,
            unanswered=unanswered,
            since=self.since,
            until=self.until,
        )


def _lines(raw: bytes, gzipped: bool) -> tuple[list[bytes], str | None, bool]:
    """The complete lines of a payload file, why part of it was unreadable (or None), and whether a
    last, cut-off line was left out."""
    problem = None
    if gzipped:
        decoder = zlib.decompressobj(wbits=31)
        try:
            text = decoder.decompress(raw)
        except zlib.error:
            return [], "not gzip, or corrupt", False
        if not decoder.eof:
            problem = "truncated (its complete lines were read)"
    else:
        text = raw
    lines = text.split(b"\n")
    cut = bool(lines.pop())  # text after the last newline was cut off mid-line
    if cut and problem is None:
        problem = "truncated (its complete lines were read)"
    return lines, problem, cut


_NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def _tensors(tensors: Any) -> dict[str, np.ndarray]:
    """V2 JSON tensors as arrays of their shape; {} when they are not well formed."""
    if not isinstance(tensors, list):
        return {}
    arrays = {}
    for tensor in tensors:
        try:
            shape = [int(s) for s in tensor["shape"]]
            datatype = tensor["datatype"]
            data = tensor["data"]
            if datatype == "BYTES":
                array = np.array([_text(v) for v in np.asarray(data, dtype=object).ravel()], dtype=object)
            else:
                array = np.asarray(data, dtype=_NUMPY[datatype])
            arrays[str(tensor["name"])] = array.reshape(shape)
        except (KeyError, TypeError, ValueError):
            return {}
    return arrays


def _text(value: Any) -> Any:
    if value is None or value == "":
        return None  # the endpoint's "missing"
    return value if isinstance(value, str) else str(value)


def _batch_rows(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> int | None:
    sizes = {a.shape[0] if a.ndim else 1 for a in (*inputs.values(), *outputs.values())}
    return sizes.pop() if inputs and outputs and len(sizes) == 1 else None


def _feature_frame(
    parts: dict[str, list[np.ndarray]], columns: Mapping[str, Sequence[str]], rows: int
) -> pd.DataFrame:
    frames = []
    for name, arrays in parts.items():
        widths = {a.shape[1] for a in arrays}
        if len(widths) != 1 or sum(len(a) for a in arrays) != rows:
            continue  # the tensor changed shape between requests: not one feature table
        matrix = np.concatenate(arrays)
        names = list(columns.get(name) or [])
        if len(names) != matrix.shape[1]:
            names = [f"{name}_{i}" for i in range(matrix.shape[1])]
        frames.append(pd.DataFrame(matrix, columns=names))
    ordered = [c for group in columns.values() for c in group]
    frame = pd.concat(frames, axis=1) if frames else pd.DataFrame(index=range(rows))
    known = [c for c in ordered if c in frame.columns]
    return frame[known + [c for c in frame.columns if c not in known]]


def iter_rows(log: InferenceLog) -> Iterable[dict[str, Any]]:
    """The log's rows as dicts: request_id, row, time, version, the features and the outputs."""
    features = log.features.to_dict("records")
    for i, key in enumerate(log.keys.to_dict("records")):
        outputs = {name: _plain(array[i]) for name, array in log.outputs.items()}
        yield {**key, **features[i], **outputs}


def _plain(value: Any) -> Any:
    return (
        value.tolist()
        if isinstance(value, np.ndarray)
        else value.item()
        if isinstance(value, np.generic)
        else value
    )
