"""Data and prediction drift of logged traffic against the reference profile.

The test for each feature is chosen as Evidently's DataDriftPreset chooses it (0.7, `stattests`
defaults), so the verdicts read the same way users know them:

  reference <= 1,000 rows  numeric with > 5 distinct values   Kolmogorov-Smirnov    drift if p <= 0.05
                           2 distinct values                  two-proportion Z-test drift if p < 0.05
                           categorical / <= 5 distinct values  chi-square            drift if p < 0.05
  reference  > 1,000 rows  numeric with > 5 distinct values   Wasserstein / std(ref) drift if >= 0.1
                           categorical / <= 5 distinct values  Jensen-Shannon        drift if >= 0.1

(distinct values counted over reference and current together, missing values left out; Jensen-
Shannon bins numbers with more than 20 distinct reference values into Sturges bins over both).
The dataset drifts when at least half of the features do.

What users of those tools miss, added here and stated in the report:
- multiple testing: with p-value tests on many features some fire by chance; the p-values are
  adjusted across features (Benjamini-Hochberg, false discovery rate at alpha) and the adjusted
  decision is the verdict. The raw p-value and the unadjusted (Evidently) verdict are kept too.
- tiny windows: a window with fewer than `min_rows` rows is refused, with the number needed.
- prediction drift: the model's outputs against its outputs on the test split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from issueops.errors import InvalidInput

from .inference_log import InferenceLog
from .profile import ReferenceProfile, predicted_values

SMALL_REFERENCE_ROWS = 1_000  # up to this many reference rows: p-value tests, above: distances
LOW_CARDINALITY = 5  # numeric features with at most this many distinct values are categories
JS_NUMERIC_BINS_ABOVE = 20  # Jensen-Shannon bins numbers with more distinct values than this
ALPHA = 0.05
DISTANCE_THRESHOLD = 0.1
DRIFT_SHARE = 0.5
MIN_ROWS = 100  # smallest window a drift check accepts; below it p-values and shares are noise
MIN_STD = 0.001  # Evidently's floor for the Wasserstein normalisation


class DriftTest(StrEnum):
    KS = "ks"
    CHI_SQUARE = "chisquare"
    Z = "z"
    WASSERSTEIN = "wasserstein"
    JENSEN_SHANNON = "jensenshannon"


P_VALUE_TESTS = frozenset({DriftTest.KS, DriftTest.CHI_SQUARE, DriftTest.Z})


class Correction(StrEnum):
    BENJAMINI_HOCHBERG = "benjamini-hochberg"
    NONE = "none"


class WindowTooSmall(InvalidInput):
    """The time window holds too few rows for the check; the message gives the number needed."""


@dataclass
class FeatureDrift:
    name: str
    kind: str  # numeric | categorical, as profiled
    test: str  # a DriftTest, or "" when a side has no values
    statistic: float | None  # KS D, chi-square, z, or the distance itself
    p_value: float | None  # raw p-value of a p-value test
    distance: float | None  # Wasserstein (normalised) or Jensen-Shannon distance
    threshold: float  # alpha for p-value tests, the distance threshold otherwise
    drift: bool  # the verdict (after the multiple-testing adjustment)
    p_adjusted: float | None = None
    drift_unadjusted: bool = False  # the verdict without adjustment (what Evidently reports)
    reference_rows: int = 0
    current_rows: int = 0
    note: str = ""


@dataclass
class DriftReport:
    model: str
    version: int | None
    rows: int
    drift: bool
    drift_share: float
    features: list[FeatureDrift]
    prediction: FeatureDrift | None = None
    reference_rows: int = 0
    drifted_features: int = 0
    drift_share_threshold: float = DRIFT_SHARE
    alpha: float = ALPHA
    distance_threshold: float = DISTANCE_THRESHOLD
    correction: str = Correction.BENJAMINI_HOCHBERG
    min_rows: int = MIN_ROWS
    since: str | None = None
    until: str | None = None
    checked_at: str = ""
    log: dict[str, int] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    @property
    def prediction_drift(self) -> bool | None:
        return None if self.prediction is None else self.prediction.drift

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prediction_drift"] = self.prediction_drift
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self) -> str:
        """One sentence: the dataset verdict and what it rests on."""
        verdict = "drift" if self.drift else "no drift"
        prediction = (
            ""
            if self.prediction is None
            else f"; predictions {'drift' if self.prediction.drift else 'do not drift'} ({self.prediction.test})"
        )
        return (
            f"{self.model} version {self.version}: {verdict} in {self.rows} rows: "
            f"{self.drifted_features} of {len(self.features)} features drift "
            f"(share {self.drift_share:.2f}, threshold {self.drift_share_threshold:g}){prediction}."
        )

    def to_markdown(self) -> str:
        """The evidence table (one row per feature, then the predictions)."""
        lines = [
            "| feature | test | statistic | p-value (adjusted) / distance | threshold | drift |",
            "|---|---|---|---|---|---|",
        ]
        for item in [*self.features, *([self.prediction] if self.prediction else [])]:
            lines.append(
                f"| {_md(item.name)} | {item.test or '-'} | {_fmt(item.statistic)} | {_evidence(item)} | "
                f"{item.threshold:g} | {'**yes**' if item.drift else 'no'} |"
            )
        return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _evidence(item: FeatureDrift) -> str:
    if item.p_value is not None:
        adjusted = (
            f" (adjusted {item.p_adjusted:.3g})"
            if item.p_adjusted is not None and item.p_adjusted != item.p_value
            else ""
        )
        return f"p = {item.p_value:.3g}{adjusted}"
    return "-" if item.distance is None else f"{item.distance:.4g}"


def choose_test(kind: str, reference_rows: int, unique: int) -> DriftTest:
    """Evidently's default test for a feature of `kind` with `unique` distinct values over both samples."""
    categorical = kind != "numeric" or unique <= LOW_CARDINALITY
    if reference_rows <= SMALL_REFERENCE_ROWS:
        if not categorical:
            return DriftTest.KS
        return DriftTest.Z if unique <= 2 else DriftTest.CHI_SQUARE
    return DriftTest.JENSEN_SHANNON if categorical else DriftTest.WASSERSTEIN


def feature_drift(
    name: str,
    reference: pd.Series,
    current: pd.Series,
    kind: str,
    *,
    alpha: float = ALPHA,
    distance_threshold: float = DISTANCE_THRESHOLD,
) -> FeatureDrift:
    """One feature's test, statistic and unadjusted verdict (missing and infinite values left out)."""
    ref, cur = _present(reference, kind), _present(current, kind)
    if len(ref) == 0 or len(cur) == 0:
        side = "reference" if len(ref) == 0 else "current window"
        return FeatureDrift(
            name, kind, "", None, None, None, alpha, False, reference_rows=len(ref), current_rows=len(cur),
            note=f"no values in the {side}; not tested",
        )  # fmt: skip
    unique = int(ref.nunique())
    if unique <= LOW_CARDINALITY:
        unique = int(pd.concat([ref, cur], ignore_index=True).nunique())
    test = choose_test(kind, len(ref), unique)
    if test in P_VALUE_TESTS:
        statistic, p_value = _P_VALUE_TESTS[test](ref, cur)
        drifted = p_value <= alpha if test == DriftTest.KS else p_value < alpha
        return FeatureDrift(
            name, kind, test, statistic, p_value, None, alpha, bool(drifted), p_adjusted=p_value,
            drift_unadjusted=bool(drifted), reference_rows=len(ref), current_rows=len(cur),
        )  # fmt: skip
    if test == DriftTest.WASSERSTEIN:
        value = _wasserstein_norm(ref, cur)
    else:
        value = _jensen_shannon(ref, cur, numeric=kind == "numeric")
    drifted = bool(value >= distance_threshold)
    return FeatureDrift(
        name, kind, test, value, None, value, distance_threshold, drifted, drift_unadjusted=drifted,
        reference_rows=len(ref), current_rows=len(cur),
    )  # fmt: skip


def _present(values: pd.Series, kind: str) -> pd.Series:
    if kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        return pd.Series(numbers[np.isfinite(numbers)])
    return values.dropna().reset_index(drop=True)


def _ks(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    result = stats.ks_2samp(ref.to_numpy(), cur.to_numpy())
    return float(result.statistic), float(result.pvalue)


def _chi_square(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    """Goodness of fit of the current counts to the reference shares (Evidently's chi-square)."""
    ref_counts, cur_counts = ref.value_counts(), cur.value_counts()
    keys = ref_counts.index.union(cur_counts.index)
    expected = ref_counts.reindex(keys, fill_value=0).to_numpy(dtype=np.float64) * (len(cur) / len(ref))
    observed = cur_counts.reindex(keys, fill_value=0).to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.chisquare(observed, expected)  # a category new in the window: infinite, p = 0
    return float(result.statistic), float(result.pvalue)


def _z(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    """Two-proportion Z-test of the share of the first (sorted) value, pooled variance."""
    keys = sorted(pd.concat([ref, cur], ignore_index=True).unique())
    if len(keys) == 1:
        return 0.0, 1.0
    p1, p2 = float((ref != keys[0]).mean()), float((cur != keys[0]).mean())
    pooled = (p1 * len(ref) + p2 * len(cur)) / (len(ref) + len(cur))
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / len(ref) + 1 / len(cur)))
    return float(z), float(2 * stats.norm.sf(abs(z)))


_P_VALUE_TESTS = {DriftTest.KS: _ks, DriftTest.CHI_SQUARE: _chi_square, DriftTest.Z: _z}


def _wasserstein_norm(ref: pd.Series, cur: pd.Series) -> float:
    ref_values = ref.to_numpy(dtype=np.float64)
    return float(
        stats.wasserstein_distance(ref_values, cur.to_numpy(dtype=np.float64))
        / max(float(ref_values.std()), MIN_STD)
    )


def _jensen_shannon(ref: pd.Series, cur: pd.Series, *, numeric: bool) -> float:
    if numeric and ref.nunique() > JS_NUMERIC_BINS_ABOVE:
        ref_values, cur_values = ref.to_numpy(dtype=np.float64), cur.to_numpy(dtype=np.float64)
        edges = np.histogram_bin_edges(np.concatenate([ref_values, cur_values]), bins="sturges")
        ref_share = np.histogram(ref_values, edges)[0] / len(ref_values)
        cur_share = np.histogram(cur_values, edges)[0] / len(cur_values)
    else:
        ref_counts, cur_counts = ref.value_counts(), cur.value_counts()
        keys = ref_counts.index.union(cur_counts.index)
        ref_share = ref_counts.reindex(keys, fill_value=0).to_numpy(dtype=np.float64) / len(ref)
        cur_share = cur_counts.reindex(keys, fill_value=0).to_numpy(dtype=np.float64) / len(cur)
    return float(distance.jensenshannon(ref_share, cur_share))


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    alpha: float = ALPHA,
    distance_threshold: float = DISTANCE_THRESHOLD,
    drift_share: float = DRIFT_SHARE,
    correction: Correction | str = Correction.BENJAMINI_HOCHBERG,
    min_rows: int = MIN_ROWS,
    model: str = "",
    version: int | None = None,
) -> DriftReport:
    """Per-feature drift of `current` against `reference` for the features in `kinds`
    (name -> numeric | categorical) and the dataset verdict by drift share.

    Raises WindowTooSmall when `current` has fewer than `min_rows` rows.
    """
    correction = Correction(correction)
    if len(current) < min_rows:
        raise WindowTooSmall(
            f"The window holds {len(current)} logged row(s)"
            + (f" of {model} version {version}" if model else "")
            + f"; a drift check needs at least {min_rows}: widen --since or wait for more traffic."
        )
    missing = [name for name in kinds if name not in current.columns or name not in reference.columns]
    if missing:
        raise InvalidInput(
            f"The logged requests lack the feature(s) {', '.join(missing[:10])} of the reference profile; "
            "were they sent to another model?"
        )
    features = [
        feature_drift(
            name, reference[name], current[name], kind, alpha=alpha, distance_threshold=distance_threshold
        )
        for name, kind in kinds.items()
    ]
    _adjust(features, alpha, correction)
    tested = [f for f in features if f.test]
    drifted = sum(f.drift for f in tested)
    share = drifted / len(tested) if tested else 0.0
    return DriftReport(
        model=model,
        version=version,
        rows=len(current),
        drift=bool(tested) and share >= drift_share,
        drift_share=round(share, 6),
        features=features,
        reference_rows=len(reference),
        drifted_features=drifted,
        drift_share_threshold=drift_share,
        alpha=alpha,
        distance_threshold=distance_threshold,
        correction=correction,
        min_rows=min_rows,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _adjust(features: list[FeatureDrift], alpha: float, correction: Correction) -> None:
    """Benjamini-Hochberg across the p-value tests: the adjusted p-value decides the verdict."""
    tested = [f for f in features if f.p_value is not None]
    if correction == Correction.NONE or len(tested) < 2:
        return
    adjusted = stats.false_discovery_control([f.p_value for f in tested], method="bh")
    for item, value in zip(tested, adjusted, strict=True):
        item.p_adjusted = float(value)
        item.drift = bool(value <= alpha if item.test == DriftTest.KS else value < alpha)


def check_drift(
    profile: ReferenceProfile,
    log: InferenceLog,
    *,
    alpha: float = ALPHA,
    distance_threshold: float = DISTANCE_THRESHOLD,
    drift_share: float = DRIFT_SHARE,
    correction: Correction | str = Correction.BENJAMINI_HOCHBERG,
    min_rows: int = MIN_ROWS,
    plots_dir: Path | None = None,
) -> DriftReport:
    """Drift of a logged window against a version's reference profile: every feature, the dataset
    verdict, and the predictions against the test split's; plots into `plots_dir` when given."""
    reference, current = aligned(profile, log)
    report = detect_drift(
        reference,
        current,
        profile.kinds,
        alpha=alpha,
        distance_threshold=distance_threshold,
        drift_share=drift_share,
        correction=correction,
        min_rows=min_rows,
        model=log.model,
        version=log.version if log.version is not None else profile.version,
    )
    predicted = predicted_values(log.outputs, profile.task_type, profile.classes)
    if predicted is not None and profile.predictions is not None and len(predicted) == log.rows:
        kind = "numeric" if profile.task_type == "regression" else "categorical"
        report.prediction = feature_drift(
            "prediction",
            profile.predictions["prediction"],
            predicted,
            kind,
            alpha=alpha,
            distance_threshold=distance_threshold,
        )
    report.since = log.since.isoformat() if log.since else None
    report.until = (log.until or datetime.now(UTC)).isoformat(timespec="seconds")
    report.log = log.summary()
    if plots_dir is not None:
        report.plots = plot_drift(
            report, reference, current, Path(plots_dir), predicted=predicted, profile=profile
        )
    return report


def aligned(profile: ReferenceProfile, log: InferenceLog) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference sample and the logged features, with numbers at the precision the endpoint
    received them (an FP32 tensor holds 0.1 as 0.10000000149; the reference must too, or every
    low-cardinality feature would look new)."""
    reference = profile.sample.copy()
    current = log.features
    for name, kind in profile.kinds.items():
        if kind == "numeric" and name in current.columns and name in reference.columns:
            dtype = current[name].dtype
            if dtype == np.float32 or dtype == np.float16:
                reference[name] = reference[name].astype(dtype).astype(np.float64)
    return reference, current


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_drift(
    report: DriftReport,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_dir: Path,
    *,
    predicted: pd.Series | None = None,
    profile: ReferenceProfile | None = None,
) -> list[str]:
    """One PNG per feature (and the predictions): reference against current, histograms for
    numbers, shares for categories; the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(f, reference[f.name], current[f.name]) for f in report.features]
    if report.prediction is not None and predicted is not None and profile is not None:
        pairs.append((report.prediction, profile.predictions["prediction"], predicted))
    written = []
    for index, (item, ref, cur) in enumerate(pairs):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", item.name)[:60] or "feature"
        path = out_dir / f"drift_{index:03d}_{slug}.png"
        _plot_one(item, _present(ref, item.kind), _present(cur, item.kind), path)
        written.append(str(path))
    return written


def _plot_one(item: FeatureDrift, ref: pd.Series, cur: pd.Series, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    numeric = item.kind == "numeric" and item.test in (DriftTest.KS, DriftTest.WASSERSTEIN)
    if numeric and len(ref) and len(cur):
        both = np.concatenate([ref.to_numpy(dtype=np.float64), cur.to_numpy(dtype=np.float64)])
        low, high = np.quantile(both, [0.005, 0.995])
        edges = np.linspace(low, high if high > low else low + 1, 31)
        ax.hist(ref, bins=edges, density=True, alpha=0.5, label=f"reference ({len(ref)})")
        ax.hist(cur, bins=edges, density=True, alpha=0.5, label=f"current ({len(cur)})")
        ax.set_ylabel("density")
    else:
        ref_share = ref.astype(str).value_counts(normalize=True)
        cur_share = cur.astype(str).value_counts(normalize=True)
        top = (ref_share.add(cur_share, fill_value=0)).sort_values(ascending=False).index[:20]
        x = np.arange(len(top))
        ax.bar(x - 0.2, ref_share.reindex(top, fill_value=0), width=0.4, label=f"reference ({len(ref)})")
        ax.bar(x + 0.2, cur_share.reindex(top, fill_value=0), width=0.4, label=f"current ({len(cur)})")
        ax.set_xticks(x, [str(t)[:12] for t in top], rotation=45, ha="right")
        ax.set_ylabel("share")
    ax.set_title(
        f"{item.name}: {item.test or 'not tested'} {_evidence(item)} — {'DRIFT' if item.drift else 'no drift'}"
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
