"""The report as a whole: read the sweeps, group their cells, write every section, figure and CSV."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..sources import SOURCES
from ..sweep import Cell, Job, SweepError, get_key, group_cells, latest_sweep, load_sweeps
from . import tables
from .crosstab import slick_sections
from .figures import plot_against_size, plot_restoration
from .layout import Section, markdown
from .paper import Paper
from .table5 import table5
from .tables import kl_mean, level_value, restore_value


def _preamble(sweep_dirs: list[Path], jobs: list[Job], cells: list[Cell], paper: Paper) -> list[str]:
    models = sorted({get_key(c.config, "model.name") for c in cells})
    notes = sorted({(get_key(c.config, "model.name"), source.note) for c in cells
                    if (source := SOURCES.get(c.config["model"].get("source"))) is not None and source.note})
    datasets = sorted({get_key(c.config, "data.name") for c in cells})
    matched = sorted({paper.model(c.config) for c in cells} - {None})
    md = [f"# Report: {', '.join(d.name for d in sweep_dirs)}", "",
          f"Sweep{'s' if len(sweep_dirs) > 1 else ''} {', '.join(f'`{d.resolve()}`' for d in sweep_dirs)}: "
          f"{sum(j.result is not None for j in jobs)} of {len(jobs)} jobs finished, "
          f"{len(cells)} cells (settings apart from seeds). Model: {', '.join(models)}; data: {', '.join(datasets)}.",
          "Accuracies in percent (macro mean over levels for Acc_test and Acc_testood, as in the paper); "
          "mean ± sample standard deviation over the seeds (`seed`, `data.seed`) where a cell has several runs.", ""]
    md += [f"Model `{name}`: {note}." for name, note in notes] + ([""] if notes else [])
    if matched:
        md += [f"Paper comparison: cells of model {', '.join(matched)} on EntityQuestions with full fine-tuning show the "
               "paper's number beside ours (Tables 1/8 per model; Table 2 at 1,920 facts; Tables 3, 4, 6, 7, 9, 10 and 11 "
               "for LLaMA-3-8B, top-k restoration of the transformer region), with Δ = ours − paper.", ""]
    else:
        md += [f"Paper comparison: none. The paper ran EntityQuestions with LLaMA-2/3 models and full fine-tuning; this "
               f"sweep's setting (data {', '.join(datasets)}, model {', '.join(models)}) is not one of them, so no "
               "paper number applies.", ""]
    return md + ["Figures 4 and 5 have no paper numbers beside them: the paper publishes them only as plots. Under Figure 2 "
                 "stand the numbers its text gives (LLaMA-3-8B) beside ours.", ""]


def _unfinished(jobs: list[Job]) -> Section:
    unfinished = [j for j in jobs if j.result is None]
    md = markdown(["job", "status", "overrides", "error"],
                  [[j.label, j.status, " ".join(j.overrides) or "—", j.error or "—"] for j in unfinished]) \
        if unfinished else ["None: every job of the sweep finished.", ""]

    def key(j: Job, dotted: str):
        return get_key(j.config, dotted) if j.config else ""
    rows = [{"job": j.label, "status": j.status, "bucket": key(j, "mastery.bucket"), "size": key(j, "data.size"),
             "seed": key(j, "seed"), "data_seed": key(j, "data.seed"), "run_key": j.result.run_key if j.result else "",
             "overrides": " ".join(j.overrides), "error": j.error} for j in jobs]
    return Section("Cells that did not finish", md, "cells.csv", rows)


def _figures(out: Path, cells: list[Cell], kl_level: int, paper: Paper) -> list[Section]:
    """Figures 2, 4 and 5 and the restoration figure, each with the table of its numbers; under Figure 2, the numbers
    the paper's text gives for it beside ours."""
    done = [c for c in cells if c.runs]
    acc = {"Acc_test": level_value("test", None), "Acc_testood": level_value("testood", None)}
    plot_against_size(out / "figure2_acc_vs_size.png", "Figure 2: accuracy against SFT data size, per training bucket", done, [
        ("In-domain (D_test)", "Acc_test (%)", acc["Acc_test"]), ("Out-of-domain (D_testood)", "Acc_testood (%)", acc["Acc_testood"])])
    acc4 = {"Acc D_test-4": level_value("test", 4), f"KL on D_test-{kl_level}": kl_mean}
    plot_against_size(out / "figure4_acc_test4.png", "Figure 4: accuracy on D_test-4 (facts the base model knows best)", done,
                      [("Accuracy on D_test-4", "Acc D_test-4 (%)", acc4["Acc D_test-4"])])
    plot_against_size(out / "figure5_kl.png", "Figure 5: first-token KL divergence from the base model", done,
                      [(f"First-token KL(fine-tuned ‖ base) on D_test-{kl_level}", "KL (nats, mean over facts)", kl_mean)])
    plot_restoration(out / "figure_restoration.png", "Restoration: accuracy against the share of parameters restored", done,
                     [("In-domain (D_test)", "Acc_test (%)", "test"), ("Out-of-domain (D_testood)", "Acc_testood (%)", "testood")],
                     restore_value)
    fig2_md, fig2_rows = tables.figure_table(cells, acc)
    fig45_md, fig45_rows = tables.figure_table(cells, acc4)
    return [
        Section("Figure 2: accuracy against SFT data size, per training bucket", tables.figure2_claims(cells, paper) + fig2_md,
                "figure2_acc_vs_size.csv", fig2_rows, ["figure2_acc_vs_size.png"]),
        Section("Figures 4 and 5: accuracy on D_test-4 and the KL to the base model, per training bucket and size", fig45_md,
                "figure4_5_acc_test4_kl.csv", fig45_rows, ["figure4_acc_test4.png", "figure5_kl.png"]),
        Section("Restoration: accuracy against the restored share, per training bucket and size",
                ["Dashed: the bucket's accuracy without restoration. The numbers are Table 4's.", ""], figures=["figure_restoration.png"]),
    ]


def write_report(sweep_dirs: Path | list[Path], paper: Paper | None = None) -> Path:
    """Write `<first sweep dir>/report/` from one or more sweeps (replacing an older report as a whole); return its path."""
    sweep_dirs = [Path(d) for d in ([sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else sweep_dirs)]
    paper = paper or Paper()
    jobs = load_sweeps(sweep_dirs)
    cells = group_cells(jobs)
    out = sweep_dirs[0] / f"report.tmp{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()

    kl_level = next(j.result for j in jobs if j.result).kl_level
    figures = _figures(out, cells, kl_level, paper)
    sections = [_unfinished(jobs), tables.table1(cells, paper), figures[0], tables.table2(cells, paper), *slick_sections(cells), figures[1],
                tables.table4(cells, paper), figures[2], tables.table6(cells, paper), tables.table3(cells, paper),
                tables.table7(cells, paper), tables.restored_where(cells, paper, "layer"),
                tables.restored_where(cells, paper, "module"), tables.table11(cells, paper), table5(cells, paper)]
    md = _preamble(sweep_dirs, jobs, cells, paper) + [line for s in sections for line in s.write(out)]
    (out / "report.md").write_text("\n".join(md))
    final = sweep_dirs[0] / "report"
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sft_knowledge.report", description="The paper's figures and tables from a sweep.")
    parser.add_argument("sweep_dirs", nargs="*", help="one or more sweep directories, reported together into the first's "
                        "report/ (default: the latest under outputs/sweeps)")
    args = parser.parse_args(argv)
    try:
        out = write_report([Path(d) for d in args.sweep_dirs] or [latest_sweep(Path("outputs/sweeps"))])
    except SweepError as err:
        sys.exit(f"error: {err}")
    print(f"report: {out / 'report.md'}")
    for f in sorted(out.iterdir()):
        if f.name != "report.md":
            print(f"  {f}")
