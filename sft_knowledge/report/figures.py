"""The report's figures: accuracy or KL against the SFT data size (paper Figures 2, 4, 5), and accuracy against the
restored share (Table 4 drawn). Files only (Agg backend): no display needed."""
from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..sweep import Cell, Stat, Value, blocks  # noqa: E402

BUCKET_COLOURS = {"all": "0.4", "d0": "#d62728", "d1": "#ff7f0e", "d2": "#2ca02c", "d3": "#1f77b4", "d4": "#9467bd"}
Panel = tuple[str, str, Value]  # title, y label, the value drawn


def _save(fig, path: Path, title: str, right: float = 1.0) -> None:
    fig.suptitle(f"{title}\n(mean over seeds; error bars: ±1 sample standard deviation)", fontsize=10)
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _line(ax, points: list[tuple[float, Stat | None]], label: str, colour: str | None) -> None:
    """One line through the (x, mean ± std) points that have a value."""
    points = sorted((x, s) for x, s in points if s is not None)
    if points:
        ax.errorbar([x for x, _ in points], [s.mean for _, s in points], yerr=[s.std or 0 for _, s in points],
                    marker="o", capsize=3, color=colour, label=label)


def plot_against_size(path: Path, title: str, cells: list[Cell], panels: list[Panel]) -> None:
    """One panel per (title, y label, value); in each, one line per training bucket against the SFT data size."""
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.5, 5.2 * len(panels)), 4.2), squeeze=False)
    lines: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        lines.setdefault((c.variant, c.bucket), []).append(c)
    sizes = sorted({round(statistics.fmean(r.n_train_facts for r in c.runs)) for c in cells if c.runs})
    for ax, (panel_title, ylabel, get) in zip(axes[0], panels):
        for (_, bucket), line in lines.items():
            line = [c for c in line if c.runs]
            _line(ax, [(statistics.fmean(r.n_train_facts for r in c.runs), c.stat(get)) for c in line],
                  line[0].label if line else "", BUCKET_COLOURS.get(bucket))
        if len(sizes) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("SFT training facts (count" + (", log scale)" if len(sizes) > 1 else ")"))
        ax.set_ylabel(ylabel)
        if len(panels) > 1:
            ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title="training bucket", fontsize=8, loc="best")
    _save(fig, path, title)


def plot_restoration(path: Path, title: str, cells: list[Cell], splits: list[tuple[str, str, str]],
                     ratio_value: Callable[[str, float], Value]) -> None:
    """A row per panel (split), a column per SFT size: accuracy against the restored %, one line per training bucket,
    with its level without restoration (ratio 0) drawn across as a dashed line of the same colour."""
    groups = [(key, [c for c in group if c.runs]) for key, group in blocks(cells).items()]
    groups = [(key, group) for key, group in groups if group]
    fig, axes = plt.subplots(len(splits), len(groups), figsize=(4.2 * len(groups) + 1.5, 3.6 * len(splits)), squeeze=False)
    for i, (panel_title, ylabel, split) in enumerate(splits):
        for j, ((variant, size), group) in enumerate(groups):
            ax = axes[i][j]
            for c in group:
                ratios = sorted({p.ratio for r in c.runs for p in r.restore})
                colour = BUCKET_COLOURS.get(c.bucket)
                _line(ax, [(ratio, c.stat(ratio_value(split, ratio))) for ratio in ratios], c.label, colour)
                if (base := c.stat(ratio_value(split, 0))) is not None:
                    ax.axhline(base.mean, color=colour, linestyle="--", linewidth=0.8)
            ratios = sorted({p.ratio for c in group for r in c.runs for p in r.restore})
            ax.set_xscale("symlog", linthresh=1)  # 0% (no restoration) stays on the axis
            ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
            ax.minorticks_off()
            ax.set_xlim(-0.2, max(ratios) * 1.15 + 0.2)
            ax.set_xlabel("restored parameters (% of the region, symlog)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{panel_title}, {size} SFT facts" + (f"\n{variant}" if variant else ""), fontsize=9)
            ax.grid(alpha=0.3)
    handles = dict(sorted({label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}.items()))  # each once
    fig.legend(list(handles.values()), list(handles), title="training bucket\n(dashed: no restoration)", fontsize=8,
               loc="center right")
    _save(fig, path, title, right=0.86)
