"""Issue bodies, comments and big payloads are read in a process of their own, not in the bridge's.

The bridge answers GitHub and /healthz from a thread of the process its worker runs in; a parse
of a 64 KiB body in that process holds the GIL the receiver needs, in slices, for as long as it
runs. In a process of its own it holds none of it, and one that runs past READ_TIMEOUT_S is
stopped and refused with a sentence, whatever the body. What comes back is the plain document
(dict, list, str, numbers...); validation, and the dataset check, happen here as before.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import threading
from multiprocessing.pool import Pool
from typing import Any

from issueops.errors import SpecError
from issueops.spec.body import extract_document

READ_TIMEOUT_S = 10.0
BIG_PAYLOAD_BYTES = 32 * 1024  # smaller payloads decode in well under a millisecond here

_lock = threading.Lock()
_pool: Pool | None = None


def _reader() -> Pool:
    global _pool
    with _lock:
        if _pool is None:
            _pool = multiprocessing.get_context("spawn").Pool(1)
            atexit.register(_pool.terminate)
        return _pool


def _stop_reader() -> None:
    global _pool
    with _lock:
        if _pool is not None:
            _pool.terminate()
            _pool = None


def read_document(body: str, *, key: str = "learning_type", timeout_s: float = READ_TIMEOUT_S) -> Any:
    """`extract_document(body, key=key)` in the reader process; SpecError as it would raise it."""
    pending = _reader().apply_async(extract_document, (body,), {"key": key})
    try:
        return pending.get(timeout_s)
    except multiprocessing.TimeoutError:
        _stop_reader()  # the parse is abandoned with its process; the next read starts a fresh one
        raise SpecError(f"The text took longer than {timeout_s:g} s to read; shorten it.") from None


def read_payload(raw: bytes) -> Any:
    """A delivery's JSON. A big one is decoded in the reader process: JSON's escapes cost ~15 ns a
    byte with the GIL held (2 ms for a comment of 64 KiB of blank lines)."""
    if len(raw) <= BIG_PAYLOAD_BYTES:
        return json.loads(raw)
    pending = _reader().apply_async(json.loads, (raw,))
    try:
        return pending.get(READ_TIMEOUT_S)
    except multiprocessing.TimeoutError:
        _stop_reader()
        raise ValueError(f"it took longer than {READ_TIMEOUT_S:g} s to decode") from None
