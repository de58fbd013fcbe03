"""Robustness results as files: tidy CSV, a markdown summary and metric-vs-severity plots.

All files are written through `napari_clipmed.io.atomic`, so a reader never sees a half-written
table or image.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from napari_clipmed.io.atomic import atomic_path, atomic_write, write_frame

if TYPE_CHECKING:
    import pandas as pd

TIDY_COLUMNS = ["model", "corruption", "severity", "metric", "value", "n"]


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    return write_frame(Path(path), frame)


def metric_filename(metric: str) -> str:
    """A file-name-safe form of a metric name (``retrieval_map@10`` -> ``retrieval_map_at_10``)."""
    return metric.replace("@", "_at_").replace("/", "_")


def _pivot_table(frame: pd.DataFrame, index: list[str], severities: Sequence[int]) -> str:
    wide = frame.pivot_table(index=index, columns="severity", values="value", aggfunc="mean", sort=False)
    head = "| " + " | ".join(index) + " | " + " | ".join(f"severity {s}" for s in severities) + " |"
    rule = "|" + "---|" * len(index) + "---:|" * len(severities)
    lines = [head, rule]
    for key, row in wide.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        cells = [f"{row[s]:.3f}" if s in row and not math.isnan(row[s]) else "" for s in severities]
        lines.append("| " + " | ".join(str(k) for k in keys) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(
    frame: pd.DataFrame,
    info: dict[str, object],
    headline: Sequence[str],
    skipped: Sequence[tuple[str, str]] = (),
) -> str:
    """Markdown: run description, per-metric means over corruptions, per-corruption headline tables."""
    severities = sorted(int(s) for s in frame["severity"].unique())
    parts = ["# Robustness to image corruptions", ""]
    parts += [f"- **{key}**: {value}" for key, value in info.items()]
    if skipped:
        shown = ", ".join(f"`{p}`" for p, _ in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        parts.append(f"- **unreadable images skipped**: {len(skipped)} ({shown}{more}; see skipped_images.csv)")
    parts += ["", "## Mean over corruptions", ""]
    parts.append(_pivot_table(frame, ["metric", "model"], severities))
    for metric in headline:
        sub = frame[frame["metric"] == metric]
        if sub.empty:
            continue
        parts += ["", f"## {metric} per corruption", "", _pivot_table(sub, ["model", "corruption"], severities)]
    return "\n".join(parts) + "\n"


def plot_metric(frame: pd.DataFrame, metric: str, path: str | os.PathLike) -> Path:
    """One panel per corruption, one line per model, x = severity; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    sub = frame[frame["metric"] == metric]
    corruptions = list(dict.fromkeys(sub["corruption"]))
    models = list(dict.fromkeys(sub["model"]))
    ncols = min(5, max(1, len(corruptions)))
    nrows = math.ceil(len(corruptions) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, corruption in zip(axes, corruptions):
        part = sub[sub["corruption"] == corruption]
        for model in models:
            line = part[part["model"] == model].sort_values("severity")
            ax.plot(line["severity"], line["value"], marker="o", label=model)
        ax.set_title(corruption, fontsize=9)
        ax.set_xticks(sorted(int(x) for x in part["severity"].unique()))
        ax.grid(alpha=0.3)
    for ax in axes[len(corruptions) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(metric, fontsize=8)
    for ax in axes[-ncols:]:
        ax.set_xlabel("severity")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(models), 4), fontsize=8)
    fig.suptitle(f"{metric} vs corruption severity")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


SELECTIVE_PREFIX = "selective_accuracy@cov"  # bench/trust.py: one curve, plotted together


def write_plots(frame: pd.DataFrame, folder: str | os.PathLike) -> list[Path]:
    """`folder/<metric>.png` for every metric in the tidy frame; the selective-accuracy points as one curve plot."""
    folder = Path(folder)
    metrics = [m for m in dict.fromkeys(frame["metric"]) if not m.startswith(SELECTIVE_PREFIX)]
    paths = [plot_metric(frame, m, folder / f"{metric_filename(m)}.png") for m in metrics]
    if frame["metric"].str.startswith(SELECTIVE_PREFIX).any():
        paths.append(plot_selective(frame, folder / "selective_accuracy.png"))
    return paths


def plot_selective(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Accuracy vs coverage (abstaining on the least confident tiles): a panel per model and corruption,
    a line per severity."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    sub = frame[frame["metric"].str.startswith(SELECTIVE_PREFIX)].copy()
    sub["coverage"] = sub["metric"].str.slice(len(SELECTIVE_PREFIX)).astype(float) / 100
    panels = list(dict.fromkeys(zip(sub["model"], sub["corruption"])))
    ncols = min(5, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (model, corruption) in zip(axes, panels):
        part = sub[(sub["model"] == model) & (sub["corruption"] == corruption)]
        for severity in sorted(part["severity"].unique()):
            line = part[part["severity"] == severity].sort_values("coverage")
            ax.plot(line["coverage"], line["value"], marker="o", label=f"severity {severity}")
        ax.set_title(f"{model}: {corruption}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("accuracy on kept tiles", fontsize=8)
    for ax in axes[-ncols:]:
        ax.set_xlabel("coverage (share kept)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8)
    fig.suptitle("selective accuracy: abstaining on the least confident tiles")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
