"""The studies' plots (matplotlib, written as PNG without a display)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must come before pyplot
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_convergence", "plot_sparsity", "plot_removal", "save_figure"]

_COLOURS = {"tlam": "tab:red", "clam": "tab:blue", "naive": "tab:green", "semantic": "tab:grey"}


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        figure.savefig(temporary, dpi=120, bbox_inches="tight")
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        temporary.unlink(missing_ok=True)
    return path


def plot_convergence(rows: Sequence[dict], path: str | os.PathLike, *, title: str, fid_label: str) -> Path:
    """FID against training step per row (paper Fig. 6a): mean over seeds, band from min to max.

    Args:
        rows: Entries of :func:`~examples.studies.report.quality_rows` (``curve`` holds
            ``{"step", "fid": summary}``).
        path: The PNG to write.
        title: Figure title.
        fid_label: The y-axis label (names the feature extractor).
    """
    figure, axes = plt.subplots(figsize=(8.5, 4.5))
    for row in rows:
        points = [(p["step"], p["fid"]) for p in row["curve"] if p["fid"]["mean"] is not None]
        if not points:
            continue
        steps = [step for step, _ in points]
        means = [fid["mean"] for _, fid in points]
        lows = [min(v for v in fid["values"] if v is not None) for _, fid in points]
        highs = [max(v for v in fid["values"] if v is not None) for _, fid in points]
        colour = _COLOURS.get(row["merger"], "black")
        style = "--" if row["sparsity"] else ("-" if row["generator"] == "asap" else ":")
        marker = "s" if row["generator"] == "spade" else "o"
        label = f"{row['backbone']} {row['method']}" + (" (50% sparse)" if row["sparsity"] else "")
        axes.plot(steps, means, style, marker=marker, color=colour, label=label)
        axes.fill_between(steps, lows, highs, color=colour, alpha=0.12, linewidth=0)
    axes.set_xlabel("training step")
    axes.set_ylabel(fid_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(figure, path)


def _interval_errors(summaries: Sequence[dict]) -> list[list[float]]:
    """Matplotlib's ``yerr`` ``[[below...], [above...]]`` from ``{"mean", "low", "high"}`` (0 without bounds)."""
    below = [s["mean"] - s["low"] if s.get("low") is not None else 0.0 for s in summaries]
    above = [s["high"] - s["mean"] if s.get("high") is not None else 0.0 for s in summaries]
    return [below, above]


def plot_sparsity(
    points: Sequence[dict], path: str | os.PathLike, *, title: str, fid_label: str, trained_at: float
) -> Path:
    """FID against evaluation sparsity (paper Fig. 6b): mean over models and its 95% interval.

    Args:
        points: ``{"sparsity", "fid": {"mean", "low", "high"}}`` entries.
        path: The PNG to write.
        title: Figure title.
        fid_label: The y-axis label.
        trained_at: The training sparsity, marked with a vertical line.
    """
    figure, axes = plt.subplots(figsize=(6, 4))
    xs = [100 * p["sparsity"] for p in points]
    means = [p["fid"]["mean"] for p in points]
    errors = _interval_errors([p["fid"] for p in points])
    axes.errorbar(xs, means, yerr=errors, marker="o", capsize=3, color="tab:red")
    axes.axvline(100 * trained_at, color="grey", linestyle=":", label=f"trained at {100 * trained_at:g}%")
    axes.set_xlabel("label sparsity at evaluation (%)")
    axes.set_ylabel(fid_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def plot_removal(bars: Sequence[dict], path: str | os.PathLike, *, title: str, fid_label: str) -> Path:
    """FID with each label removed (paper Fig. 6c), next to all labels present; bars show 95% intervals.

    Args:
        bars: ``{"removed": name or None, "fid": {"mean", "low", "high"}}`` entries; None is the reference.
        path: The PNG to write.
        title: Figure title.
        fid_label: The y-axis label.
    """
    figure, axes = plt.subplots(figsize=(6, 4))
    names = ["none" if b["removed"] is None else b["removed"] for b in bars]
    means = [b["fid"]["mean"] for b in bars]
    errors = _interval_errors([b["fid"] for b in bars])
    colours = ["tab:grey" if b["removed"] is None else "tab:red" for b in bars]
    axes.bar(names, means, yerr=errors, capsize=3, color=colours)
    axes.set_xlabel("label removed")
    axes.set_ylabel(fid_label)
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    return save_figure(figure, path)
