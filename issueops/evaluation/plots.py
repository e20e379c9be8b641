"""The plots every evaluation draws: matplotlib on the Agg backend, saved as PNG next to results.json."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display; imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> str:
    """Write `fig` to `path` (PNG, 80 dpi), close it and return the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    pyplot().close(fig)
    return str(path)
