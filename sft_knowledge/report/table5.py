"""Table 5: general ability (eval.harness, lm-evaluation-harness) of the fine-tuned model and of each restored model
that restore.export saved, with the paper's LLaMA-3-8B numbers beside ours where the setting is the paper's
(Paper.table5): one block per size, a row per restoration ratio (0: the fine-tuned model), a column per bucket, for
each task and metric the runs scored."""
from __future__ import annotations

from ..results import RunResult
from ..sweep import Cell, Value
from .layout import Section, grid, missing
from .paper import Paper

FINE_TUNED = "fine_tuned"  # results.json `harness`: {"fine_tuned": scores, "restored": {"<ratio>": scores}}
# Our (task, metric) -> the paper's Table 5 column; it states no answer extraction for GSM8K, so both of the harness's
PAPER_COLUMNS = {("gsm8k", "exact_match,strict-match"): "gsm8k", ("gsm8k", "exact_match,flexible-extract"): "gsm8k",
                 ("xsum_rouge", "rougeL"): "xsum_rougeL"}
PERCENT = ("exact_match", "acc", "rouge", "f1")  # metrics the harness gives as fractions: shown in percent, as the paper


def harness_scores(r: RunResult, ratio: float) -> dict[str, dict[str, float]]:
    """A run's harness scores of its fine-tuned model (ratio 0) or of its model restored at `ratio`."""
    return r.harness.get(FINE_TUNED, {}) if ratio == 0 else r.harness.get("restored", {}).get(f"{ratio:g}", {})


def harness_value(task: str, metric: str, ratio: float) -> Value:
    scale = 100 if metric.startswith(PERCENT) else 1

    def get(r: RunResult) -> float | None:
        value = harness_scores(r, ratio).get(task, {}).get(metric)
        return None if value is None else scale * value
    return get


def _ratios(r: RunResult) -> list[float]:
    """The ratios a run has scores at, as restore.ratios writes them (10, not 10.0)."""
    restored = [float(k) for k in r.harness.get("restored", {})]
    return ([0] if r.harness.get(FINE_TUNED) else []) + [int(k) if k.is_integer() else k for k in restored]


def _metrics(cells: list[Cell]) -> list[tuple[str, str]]:
    """(task, metric) of every score in the runs, without standard errors and document counts."""
    return sorted({(task, metric) for c in cells for r in c.runs for ratio in _ratios(r)
                   for task, row in harness_scores(r, ratio).items() for metric in row
                   if metric != "n_docs" and "_stderr" not in metric})


def table5(cells: list[Cell], paper: Paper) -> Section:
    md, rows = [], []
    for task, metric in _metrics(cells):
        column = PAPER_COLUMNS.get((task, metric))
        unit = " (%)" if metric.startswith(PERCENT) else ""
        block_md, block_rows = grid(
            cells, key_name="ratio", keys=lambda g: sorted({k for c in g for r in c.runs for k in _ratios(r)}),
            value=lambda ratio, t=task, m=metric: harness_value(t, m, ratio),
            paper=lambda c, ratio, col=column: paper.table5(c, col, ratio) if col else None, baseline=0,
            extra={"task": task, "metric": metric},
            caption=lambda g, t=task, m=metric, u=unit: f"{t} {m}{u} of the fine-tuned model (ratio 0) and the restored ones")
        md, rows = md + block_md, rows + block_rows
    if not rows:
        md = missing("general-ability scores (results.json `harness`)",
                     "eval.harness.tasks=[gsm8k,xsum_rouge] restore.export=[3,10]")
    else:
        md += ["Gain: the score minus the fine-tuned model's, per run and then averaged. One model's score has the "
               "harness's standard error (results.json `<metric>_stderr`; about 1.4 points on GSM8K's 1,319 problems), "
               "of the order of the paper's gains (GSM8K +1.91 at 10%, XSum ROUGE-L +0.05).", ""]
    return Section("Table 5: general ability after restoration (lm-evaluation-harness)", md, "table5_general.csv", rows)
