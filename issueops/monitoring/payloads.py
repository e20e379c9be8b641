"""Inference payload logs in KServe's payload-logger format, kept in the object store.

Every logged inference is two CloudEvents 1.0 with the same `id`:
`org.kubeflow.serving.inference.request` (data: the V2 request) and
`org.kubeflow.serving.inference.response` (data: the V2 response), with KServe's extension
attributes (`inferenceservicename`, `namespace`, `component`, `endpoint`) and two of ours
(`modelname`, `modelversion`). They are stored in structured mode, one JSON event a line, a batch
per object: monitoring/<model>/<version>/<YYYY-MM-DD>/<HHMMSS>-<random>.jsonl.gz (or .jsonl).

Two writers produce that form: `PayloadLogger`, which `issueops serve` feeds off the request path
(bounded queue that drops and counts, sample rate, flush by size and interval on a thread), and
`events_from_http`, which turns what a KServe InferenceService logger POSTs (binary mode: ce-*
headers and the body) into the same events for a receiver. `read_inference_log` is the one reader.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import queue
import re
import threading
import time as _time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd

from issueops.errors import InvalidInput, IssueOpsError, NotFound
from issueops.store import ObjectStore

from .metrics import PAYLOAD_LOG_DROPPED, PAYLOAD_LOG_QUEUE_DEPTH

log = logging.getLogger("issueops.monitoring")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SPEC_VERSION = "1.0"
MONITORING_PREFIX = "monitoring"
DEFAULT_SOURCE = "issueops-serve"
# KServe's extension attributes; ours carry the registry's model name and version.
KSERVE_EXTENSIONS = ("inferenceservicename", "namespace", "component", "endpoint", "metadata", "annotations")
MODEL_EXTENSION = "modelname"
VERSION_EXTENSION = "modelversion"
VERSION_ANNOTATION = "issueops.io/version"  # on the InferenceService issueops applies (kserve.py)

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CE_REQUIRED = ("id", "source", "type", "specversion")


class NeverServed(NotFound):
    """No inference of this model (version) was ever logged."""


def payload_prefix(model: str, version: int | str | None = None, day: date | None = None) -> str:
    """Store prefix of a model's payload logs (of one version, of one day)."""
    parts = [MONITORING_PREFIX, model]
    if version is not None:
        parts.append(str(version))
        if day is not None:
            parts.append(day.isoformat())
    return "/".join(parts)


def payload_sample_rate(value: str | float | None) -> float:
    """ISSUEOPS_PAYLOAD_LOG as a fraction of requests to log: unset = 1.0, 0 = off."""
    if value is None or value == "":
        return 1.0
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"ISSUEOPS_PAYLOAD_LOG is {str(value)[:40]!r}; give the fraction of requests to log, "
            "from 0 (off) to 1 (all)."
        ) from None
    if not 0.0 <= rate <= 1.0:
        raise InvalidInput(f"ISSUEOPS_PAYLOAD_LOG is {rate:g}; it is a fraction from 0 (off) to 1 (all).")
    return rate


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'30m', '24h', '7d', '2w' before `now`, or an ISO date/time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"--since {text[:40]!r} is neither a duration (30m, 24h, 7d, 2w) nor an ISO time "
            "(2026-01-31 or 2026-01-31T08:00:00Z)."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _rfc3339(moment: datetime | None) -> str:
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def v2_tensors(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Named numpy arrays as V2 JSON tensors (name, shape, datatype, flat data)."""
    tensors = []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind in "OUS":
            datatype = "BYTES"
            data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
        else:
            datatype = _V2_DATATYPES.get(array.dtype.str[1:], "FP64")
            data = array.ravel().tolist()
        tensors.append({"name": name, "shape": list(array.shape), "datatype": datatype, "data": data})
    return tensors


def _v2_arrays(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """As v2_tensors, with numeric data kept as flat arrays that orjson writes itself: a third
    less time than through Python floats, and float32 values as float32 (0.1, not 0.10000000149)."""
    tensors = []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind in "OUS":
            tensors.extend(v2_tensors({name: array}))
            continue
        datatype = _V2_DATATYPES.get(array.dtype.str[1:], "FP64")
        tensors.append(
            {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel()}
        )
    return tensors


_V2_DATATYPES = {
    "f4": "FP32",
    "f8": "FP64",
    "f2": "FP16",
    "i8": "INT64",
    "i4": "INT32",
    "i2": "INT16",
    "i1": "INT8",
    "u1": "UINT8",
    "b1": "BOOL",
}


def inference_events(
    model: str,
    version: int | str,
    request: Mapping[str, Any],
    response: Mapping[str, Any],
    *,
    request_id: str | None = None,
    time: datetime | None = None,
    source: str = DEFAULT_SOURCE,
    namespace: str = "",
    endpoint: str = "default",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request and response CloudEvents of one V2 inference (same id, KServe's attributes).

    `request` and `response` are V2 JSON bodies (inputs/outputs of name, shape, datatype, data);
    the id is the request's own `id` when it has one, as KServe's logger takes the client's ce-id.
    """
    request_id = str(request_id or request.get("id") or response.get("id") or uuid.uuid4())
    common = {
        "specversion": SPEC_VERSION,
        "id": request_id,
        "source": source,
        "time": _rfc3339(time),
        "datacontenttype": "application/json",
        "inferenceservicename": model,
        "namespace": namespace,
        "component": "predictor",
        "endpoint": endpoint,
        MODEL_EXTENSION: model,
        VERSION_EXTENSION: str(version),
    }
    return (
        {**common, "type": REQUEST_TYPE, "data": dict(request)},
        {**common, "type": RESPONSE_TYPE, "data": dict(response)},
    )


def events_from_http(
    headers: Mapping[str, str],
    body: bytes,
    *,
    model: str | None = None,
    version: int | str | None = None,
) -> list[dict[str, Any]]:
    """The stored form of what a KServe logger (or any CloudEvents sender) POSTs.

    Binary mode (ce-* headers, the payload as the body), structured mode
    (application/cloudevents+json) and batches (application/cloudevents-batch+json) are accepted.
    Model and version come from the arguments, else from the event (our extensions, the V2 body's
    model_name/model_version, the InferenceService's `issueops.io/version` annotation); an event
    that names neither is refused with InvalidInput (HTTP 400).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type", "")
    if content_type.startswith("application/cloudevents-batch+json"):
        raw = _json_body(body, "a CloudEvents batch")
        if not isinstance(raw, list):
            raise InvalidInput("A CloudEvents batch is a JSON array of events.")
        events = raw
    elif content_type.startswith("application/cloudevents+json"):
        events = [_json_body(body, "a structured CloudEvent")]
    else:
        event: dict[str, Any] = {
            key[3:]: value for key, value in lower.items() if key.startswith("ce-") and len(key) > 3
        }
        if content_type:
            event["datacontenttype"] = content_type
        _set_data(event, body)
        events = [event]
    return [_normalised(e, model, version) for e in events]


def _json_body(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"The body is not {what} (not JSON).") from None


def _set_data(event: dict[str, Any], body: bytes) -> None:
    content_type = str(event.get("datacontenttype", "application/json"))
    if "json" in content_type or not content_type:
        try:
            event["data"] = json.loads(body) if body else None
            return
        except (ValueError, UnicodeDecodeError):
            pass
    event["data_base64"] = base64.b64encode(body).decode("ascii")


def _normalised(event: Any, model: str | None, version: int | str | None) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidInput("A CloudEvent is a JSON object.")
    missing = [name for name in _CE_REQUIRED if not event.get(name)]
    if missing:
        raise InvalidInput(f"The CloudEvent lacks {', '.join(missing)} (ce-{missing[0]} in binary mode).")
    if event["type"] not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise InvalidInput(
            f"CloudEvents of type {str(event['type'])[:80]!r} are not inference payloads; "
            f"expected {REQUEST_TYPE} or {RESPONSE_TYPE}."
        )
    event = dict(event)
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    name = model or event.get(MODEL_EXTENSION) or data.get("model_name") or event.get("inferenceservicename")
    number = version or event.get(VERSION_EXTENSION) or data.get("model_version") or _annotated_version(event)
    if not name:
        raise InvalidInput(
            "The CloudEvent names no model (ce-inferenceservicename or the body's model_name)."
        )
    if not number or not str(number).isdigit():
        raise InvalidInput(
            f"The CloudEvent for {name} names no model version (the body's model_version or the "
            f"InferenceService annotation {VERSION_ANNOTATION})."
        )
    event[MODEL_EXTENSION], event[VERSION_EXTENSION] = str(name), str(int(number))
    event.setdefault("time", _rfc3339(None))
    return event


def _annotated_version(event: Mapping[str, Any]) -> str | None:
    try:
        annotations = json.loads(event.get("annotations") or "{}")
    except (TypeError, ValueError):
        return None
    return annotations.get(VERSION_ANNOTATION) if isinstance(annotations, dict) else None


def write_events(
    store: ObjectStore, events: Sequence[Mapping[str, Any]], *, compress: bool = True
) -> list[str]:
    """Append a batch of stored-form events as new objects, one per model, version and day; keys."""
    groups: dict[str, list[bytes]] = {}
    for event in events:
        moment = _event_time(event) or datetime.now(UTC)
        prefix = payload_prefix(event[MODEL_EXTENSION], event[VERSION_EXTENSION], moment.date())
        groups.setdefault(prefix, []).append(_event_line(event))
    keys = []
    stamp = datetime.now(UTC).strftime("%H%M%S")
    for prefix, lines in groups.items():
        data = b"\n".join(lines) + b"\n"
        suffix = ".jsonl.gz" if compress else ".jsonl"
        key = f"{prefix}/{stamp}-{uuid.uuid4().hex[:12]}{suffix}"
        # Level 1: logged floats compress to 49% there, 46% at level 5, which takes five times the
        # CPU (about 8 ms for one 114-row request here): the server's cores are worth more.
        store.put_bytes(key, gzip.compress(data, compresslevel=1, mtime=0) if compress else data)
        keys.append(key)
    return keys


def _event_line(event: Mapping[str, Any]) -> bytes:
    """One event as a JSON line. orjson writes NaN and infinities as null (JSON has neither; the
    reader reads null as NaN, a missing value); json takes the integers orjson cannot (over 64 bits)."""
    try:
        return orjson.dumps(event, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return json.dumps(event, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(event.get("time")))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class PayloadLogStats:
    """What the logger did with the inferences it was given."""

    logged: int = 0  # inferences written to the store (for log_events: the batches of events given)
    sampled_out: int = 0  # left out by the sample rate
    dropped: int = 0  # the queue was full (the store is slower than the traffic)
    failed: int = 0  # written but the store refused them (lost, counted)
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Inference:
    model: str
    version: int | str
    request: Mapping[str, Any] | None
    response: Mapping[str, Any] | None
    request_id: str | None
    time: datetime
    inputs: Mapping[str, np.ndarray] | None = None  # log_tensors: made V2 JSON on the logger's thread
    outputs: Mapping[str, np.ndarray] | None = None
    nbytes: int = 0

    def as_events(self, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
        request, response = self.request, self.response
        if self.inputs is not None:
            request = {"id": self.request_id, "inputs": _v2_arrays(self.inputs)}
            response = {
                "id": self.request_id,
                "model_name": self.model,
                "model_version": str(self.version),
                "outputs": _v2_arrays(self.outputs or {}),
            }
        return inference_events(
            self.model,
            self.version,
            request,
            response,
            request_id=self.request_id,
            time=self.time,
            source=source,
        )


@dataclass
class _Events:
    events: list[dict[str, Any]]


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class PayloadLogger:
    """Logs inferences to the store in batches, on its own thread, never blocking the caller.

    `log()` only samples and queues: the events are built, serialised and written by the thread,
    a batch per `batch_size` inferences or `flush_interval_s`, whichever comes first. When the store
    stalls the queue fills up to `max_queue` inferences (or `max_queue_bytes` of tensors given to
    `log_tensors`) and further ones are dropped and counted (`stats.dropped`, and the
    issueops_payload_log_dropped_total counter), so memory stays bounded. What is given to `log()`
    or `log_tensors()` must not be changed by the caller afterwards.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        sample_rate: float = 1.0,
        max_queue: int = 10_000,
        max_queue_bytes: int = 256 << 20,
        batch_size: int = 1_000,
        flush_interval_s: float = 5.0,
        compress: bool = True,
        source: str = DEFAULT_SOURCE,
    ):
        if not 0.0 <= sample_rate <= 1.0:
            raise InvalidInput(
                f"The payload-log sample rate is {sample_rate:g}; it is a fraction from 0 to 1."
            )
        self.store, self.sample_rate, self.source = store, float(sample_rate), source
        self.batch_size, self.flush_interval_s, self.compress = max(1, batch_size), flush_interval_s, compress
        self.stats = PayloadLogStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_queue))
        self.max_queue_bytes, self._queued_bytes = max(1, max_queue_bytes), 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0

    @property
    def queue_depth(self) -> int:
        """Inferences waiting to be written (for a gauge; bounded by max_queue)."""
        return self._queue.qsize()

    def publish_queue_depth(self) -> None:
        """Set the issueops_payload_log_queue_depth gauge (servers call it now and then)."""
        PAYLOAD_LOG_QUEUE_DEPTH.set(self._queue.qsize())

    def log(
        self,
        model: str,
        version: int | str,
        request: Mapping[str, Any],
        response: Mapping[str, Any],
        *,
        request_id: str | None = None,
        time: datetime | None = None,
    ) -> bool:
        """Queue one inference (V2 JSON request and response); False when sampled out or dropped."""
        request_id = str(request_id or request.get("id") or uuid.uuid4())
        if not self._sampled(request_id):
            return False
        return self._put(_Inference(model, version, request, response, request_id, time or datetime.now(UTC)))

    def log_tensors(
        self,
        model: str,
        version: int | str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        *,
        request_id: str,
        time: datetime | None = None,
    ) -> bool:
        """Queue one inference as its input and output arrays by tensor name (what a server holds
        once it has answered): their V2 JSON is made on the logger's thread, not the caller's.
        False when sampled out or dropped."""
        if not self._sampled(request_id):
            return False
        nbytes = sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outputs.values())
        item = _Inference(
            model, version, None, None, request_id, time or datetime.now(UTC), inputs, outputs, nbytes
        )
        return self._put(item)

    def _sampled(self, request_id: str) -> bool:
        if self.sample_rate <= 0 or self._closed:
            return False
        # The same id always gets the same decision, so a request and its replays are logged alike.
        if self.sample_rate < 1 and zlib.crc32(request_id.encode()) / 2**32 >= self.sample_rate:
            with self._lock:
                self.stats.sampled_out += 1
            return False
        return True

    def _put(self, item: _Inference | _Events) -> bool:
        if self._thread is None:
            self.start()
        nbytes = getattr(item, "nbytes", 0)
        if nbytes:
            with self._lock:
                if self._queued_bytes + nbytes > self.max_queue_bytes and self._queued_bytes:
                    return self._dropped()
                self._queued_bytes += nbytes
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._queued_bytes -= nbytes
                return self._dropped()
        return True

    def _dropped(self) -> bool:
        """Count one drop (the caller holds the lock)."""
        self.stats.dropped += 1
        PAYLOAD_LOG_DROPPED.inc()
        return False

    def log_events(self, events: Sequence[Mapping[str, Any]]) -> bool:
        """Queue events already in the stored form (a receiver's events_from_http); no sampling,
        the sender sampled. False, and counted as dropped, when the queue is full."""
        if self._closed or not events:
            return False
        return self._put(_Events([dict(e) for e in events]))

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="payload-logger", daemon=True)
                self._thread.start()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write everything queued so far; False if that took longer than `timeout`."""
        if self._thread is None:
            return True
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued and stop the thread (serve calls this on shutdown)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.warning(
                    "payload log: the store did not keep up; %d queued inferences are lost",
                    self._queue.qsize(),
                )
                return
            self._thread.join(timeout)

    def _run(self) -> None:
        batch: list[_Inference | _Events] = []
        deadline = _time.monotonic() + self.flush_interval_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - _time.monotonic()))
            except queue.Empty:
                item = None
            if isinstance(item, (_Inference, _Events)):
                batch.append(item)
            due = _time.monotonic() >= deadline
            if batch and (len(batch) >= self.batch_size or due or item is _STOP or isinstance(item, _Flush)):
                self._write(batch)
                batch = []
            if isinstance(item, _Flush):
                item.done.set()
            if due or not batch:
                deadline = _time.monotonic() + self.flush_interval_s
            if item is _STOP:
                return

    def _write(self, batch: list[_Inference | _Events]) -> None:
        try:
            self._write_events(batch)
        finally:  # the tensors count against max_queue_bytes until written
            nbytes = sum(getattr(item, "nbytes", 0) for item in batch)
            if nbytes:
                with self._lock:
                    self._queued_bytes -= nbytes

    def _write_events(self, batch: list[_Inference | _Events]) -> None:
        events: list[dict[str, Any]] = []
        for item in batch:
            if isinstance(item, _Events):
                events.extend(item.events)
                continue
            events.extend(item.as_events(self.source))
        try:
            write_events(self.store, events, compress=self.compress)
        except (IssueOpsError, OSError, TypeError, ValueError) as exc:
            with self._lock:
                self.stats.failed += len(batch)
            log.warning("payload log: %d inferences not written: %s", len(batch), exc)
            return
        with self._lock:
            self.stats.logged += len(batch)
            self.stats.batches += 1


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
        if len(parts) == 3 and parts[0].isdigit() and _DAY.match(parts[1]):
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
        and bool(_DAY.match(parts[3]))
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
            moment = _event_time(event)
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
