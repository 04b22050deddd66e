"""How every table is written: a `Section` of report.md with its CSV, Markdown tables, the text of one value (ours,
the paper's, the gain), and `grid`, the one layout of the per-size tables (rows: a key such as the restored %;
columns: the training buckets)."""
from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..results import RunResult
from ..sweep import Cell, Stat, Value, blocks

RUN = "python -m sft_knowledge.run"


@dataclass
class Section:
    """One part of report.md: a heading, its figures and text, and the rows of its CSV (written even when empty)."""
    heading: str
    md: list[str]
    csv: str | None = None
    rows: list[dict] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def write(self, out: Path) -> list[str]:
        """Write the CSV into `out`; return the section's lines of report.md."""
        if self.csv:
            with open(out / self.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.rows[0]) if self.rows else ["empty"])
                writer.writeheader()
                writer.writerows(self.rows)
        return [f"## {self.heading}", ""] + [line for fig in self.figures for line in (f"![{fig}]({fig})", "")] + self.md


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def missing(what: str, command: str) -> list[str]:
    """The text of a table whose cells this sweep lacks: what is missing and the command that produces it."""
    return [f"Not in this sweep: {what}. `{RUN} {command}` produces it (`experiment=paper` produces every table).", ""]


def value_text(stat: Stat | None, cell: Cell, paper: float | None = None, gain: Stat | None = None,
               paper_gain: float | None = None) -> str:
    """Ours (mean ± std), with its gain over the table's baseline row, and the paper's number with the difference."""
    if stat is None:
        return cell.absent() if not cell.runs else "—"
    text = str(stat) + (f", gain {gain.mean:+.2f}" if gain is not None else "")
    if paper is None:
        return text
    theirs = f"paper {paper:.2f}" + (f", gain {paper_gain:+.2f}" if paper_gain is not None else "")
    return f"{text} ({theirs}; Δ {stat.mean - paper:+.2f})"


def row(cell: Cell, head: list[str], values: list[str]) -> list[str]:
    """A table row for a cell; one with no finished run says why once instead of in every column."""
    return head + (values if cell.runs else [cell.absent()] + [""] * (len(values) - 1))


def block_title(variant: str, size: str) -> str:
    return f"### {size} SFT facts" + (f" — {variant}" if variant else "")


def _no_paper(cell: Cell, key: Any) -> None:
    return None


def _difference(value: Value, baseline: Value) -> Value:
    def get(r: RunResult) -> float | None:
        v, b = value(r), baseline(r)
        return None if v is None or b is None else v - b
    return get


def grid(cells: list[Cell], *, key_name: str, keys: Callable[[list[Cell]], list], value: Callable[[Any], Value],
         caption: Callable[[list[Cell]], str], paper: Callable[[Cell, Any], float | None] = _no_paper,
         baseline: Any = None, extra: dict | None = None) -> tuple[list[str], list[dict]]:
    """One block per (variant, size): a row per key (`keys` of the block's cells), a column per training bucket.

    With a `baseline` key, each value also shows its gain over the baseline row (per run, then averaged), and so
    does the paper's number. CSV rows: variant, size, bucket, `extra`, the key, mean/std/n, [gain], paper, diff.
    """
    md, rows = [], []
    for (variant, size), group in blocks(cells).items():
        row_keys = keys(group)
        if not row_keys:
            continue
        body = []
        for key in row_keys:
            line = [str(key)]
            for c in group:
                stat, p = c.stat(value(key)), paper(c, key)
                gain = paper_gain = None
                if baseline is not None:
                    gain = c.stat(_difference(value(key), value(baseline))) if key != baseline else None
                    p0 = paper(c, baseline)
                    paper_gain = p - p0 if key != baseline and p is not None and p0 is not None else None
                line.append(value_text(stat, c, p if stat is not None else None, gain, paper_gain))
                if stat is None:
                    continue
                gains = {} if baseline is None else {"gain": "" if gain is None else gain.mean,
                                                     "paper_gain": "" if paper_gain is None else paper_gain}
                rows.append({"variant": variant, "size": size, "bucket": c.bucket, **(extra or {}), key_name: key,
                             **stat.csv(), **gains, "paper": "" if p is None else p, "diff": "" if p is None else stat.mean - p})
            body.append(line)
        md += [f"{block_title(variant, size)}: {caption(group)}", ""] + markdown([key_name] + [c.label for c in group], body)
    return md, rows
