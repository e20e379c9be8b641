"""Predictions in this process from a packaged version: the Triton repository `issueops serve`
loads (fetched from the object store, digests checked) run with ONNX Runtime on table rows."""

from __future__ import annotations

import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from issueops.errors import InvalidInput
from issueops.packaging.onnx_parity import NUMERIC_INPUT, onnx_feeds
from issueops.packaging.package import resolve_version, triton
from issueops.store import ObjectStore


@dataclass
class Prediction:
    model: str
    version: int
    predictions: list[dict[str, Any]]  # one per row: label (a class name), probabilities, prediction, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Predictor:
    """Answers table rows with a model's production (or a named) version; keeps what it loaded."""

    def __init__(self, store: ObjectStore, registry, cache: Path):
        self.store, self.registry, self.cache = store, registry, Path(cache)
        self._loaded: dict[str, tuple[str, Any]] = {}  # model -> (packaged_at, LoadedVersion)
        self._lock = threading.Lock()

    def predict(self, model: str, rows: list[dict[str, Any]], version: int | str | None = None) -> Prediction:
        info = resolve_version(self.registry, model, version)
        loaded = self._load(info.model, info.version)
        columns: dict[str, list[str]] = loaded.parameters.get("feature_columns") or {}
        if not columns:
            raise InvalidInput(
                f"Version {info.version} of {model} takes observation tensors, not table rows; "
                "query it through `issueops serve`."
            )
        if not 1 <= len(rows) <= loaded.max_batch_size:
            raise InvalidInput(f"Give 1 to {loaded.max_batch_size} rows; {len(rows)} were given.")
        outputs = loaded.batcher.run(_feeds(rows, columns, loaded))
        return Prediction(info.model, info.version, _per_row(outputs, loaded, len(rows)))

    def _load(self, model: str, version: int):
        """The loaded version, fetched again only when it was packaged anew since."""
        from issueops.serving.model import LoadedVersion

        packaged_at = triton.read_package(self.store, model, version).get("packaged_at", "")
        with self._lock:
            held = self._loaded.get(model)
            if held and held[1].version == version and held[0] == packaged_at:
                return held[1]
            target = self.cache / model / str(version)
            shutil.rmtree(target, ignore_errors=True)
            triton.fetch_model(self.store, model, version, target)
            loaded = LoadedVersion.load(target, model, version)
            if held:
                held[1].batcher.executor.shutdown(wait=False)
            self._loaded[model] = (packaged_at, loaded)
            return loaded


def _feeds(rows: list[dict[str, Any]], columns: dict[str, list[str]], loaded) -> dict[str, np.ndarray]:
    import pandas as pd

    needed = [c for group in columns.values() for c in group]
    frame = pd.DataFrame.from_records(rows)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InvalidInput(
            f"The rows lack the column(s) {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            + f"; {loaded.model} takes {', '.join(needed)}."
        )
    from issueops.serving.model import NUMPY_DTYPES

    numeric = next((t for t in loaded.inputs if t.name == NUMERIC_INPUT), None)
    try:
        return onnx_feeds(frame, columns, NUMPY_DTYPES.get(numeric.datatype if numeric else "", np.float64))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"The numeric columns of {loaded.model} ({', '.join(columns.get(NUMERIC_INPUT, [])[:10])}) "
            f"take numbers or null: {str(exc)[:200]}"
        ) from None


def _per_row(outputs: list[np.ndarray], loaded, rows: int) -> list[dict[str, Any]]:
    """Each row's outputs by name; class indices become the class names the model was trained on."""
    classes = loaded.parameters.get("classes")
    answers: list[dict[str, Any]] = [{} for _ in range(rows)]
    for spec, array in zip(loaded.outputs, outputs, strict=True):
        for answer, value in zip(answers, array, strict=True):
            if classes and spec.name == "label":
                answer["label"] = classes[int(value)]
            elif classes and spec.name == "probabilities":
                answer["probabilities"] = {c: float(p) for c, p in zip(classes, value, strict=True)}
            else:
                answer[spec.name] = value.item() if np.size(value) == 1 else np.asarray(value).tolist()
    return answers
