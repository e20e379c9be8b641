"""`PayloadLogger`: the payload log `issueops serve` writes off the request path, on a thread of
its own, in the form payloads.py defines."""

from __future__ import annotations

import logging
import queue
import threading
import time as _time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from issueops.errors import InvalidInput, IssueOpsError
from issueops.store import ObjectStore

from .metrics import PAYLOAD_LOG_DROPPED, PAYLOAD_LOG_QUEUE_DEPTH
from .payloads import DEFAULT_SOURCE, inference_events, v2_array_tensors, write_events

log = logging.getLogger("issueops.monitoring")


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
            request = {"id": self.request_id, "inputs": v2_array_tensors(self.inputs)}
            response = {
                "id": self.request_id,
                "model_name": self.model,
                "model_version": str(self.version),
                "outputs": v2_array_tensors(self.outputs or {}),
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
