"""The benchmark suite's table: every benchmarks/results/*.json in one markdown file, benchmarks/results/README.md.

    python benchmarks/report.py [--quick]     (--quick: results/quick/*.json into results/quick/README.md)

Without --quick, and reading the project's own results folder, it also writes each benchmark's headline rows (those
with a target) into the project's README, between the BEGIN/END comment lines of its "Performance and benchmarks"
section, so the README always shows the latest measured figures; the whole table stays in benchmarks/results/.

Each benchmark's rows (common.row): ours, the baseline measured in the same run, the speed-up (how many times better
ours is) and whether the target is met, with the date and machine of the run. bench_make_run.py writes its own
format (phases against a time and memory budget); its rows are read from that, the budget standing as the baseline.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- BEGIN benchmarks table (benchmarks/report.py) -->", "<!-- END benchmarks table -->"

ORDER = ["restore", "sft", "probe", "parallel", "make_run"]  # the suite's order; any other result file comes after


def make_run_rows(result: dict) -> list[dict]:
    """bench_make_run.py's phases as rows: each phase's seconds and peak RSS against its budget."""
    rows = []
    for phase, m in result["phases"].items():
        budget = result["budget_s"][phase]
        rows.append({"metric": f"make run, {phase}", "ours": m["seconds"], "baseline": budget, "baseline_label": "budget",
                     "unit": "s", "speedup": budget / m["seconds"], "target": "within the budget", "met": m["seconds"] <= budget})
        rows.append({"metric": f"make run, {phase}, peak RSS", "ours": m["peak_rss_gb"], "baseline": result["rss_budget_gb"],
                     "baseline_label": "budget", "unit": "GB", "speedup": result["rss_budget_gb"] / m["peak_rss_gb"],
                     "target": "within the budget", "met": m["peak_rss_gb"] <= result["rss_budget_gb"]})
    return rows


def _number(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(results: dict[str, dict]) -> str:
    lines = ["| benchmark | metric | ours | baseline | speed-up | target | met | run |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        rows = result["rows"] if "rows" in result else make_run_rows(result)
        when = result.get("date") or result.get("measured_at", "")
        where = f"{result['machine']['cores']} cores" if "machine" in result else ""
        for r in rows:
            met = "-" if r["met"] is None else "yes" if r["met"] else "**no**"
            lines.append(f"| {name} | {r['metric']} | {_number(r['ours'])} {r['unit']} | {_number(r['baseline'])} {r['unit']} "
                         f"({r['baseline_label']}) | {r['speedup']:.2f}x | {r['target'] or '-'} | {met} | {when} {where} |")
    return "\n".join(lines)


def headlines(results: dict[str, dict]) -> list[str]:
    """The rows with a target, one line each: the README's short form of the table."""
    lines = []
    for name, result in results.items():
        for r in result["rows"] if "rows" in result else make_run_rows(result):
            if r["target"]:
                met = "met" if r["met"] else "**not met**"
                lines.append(f"- {name}: {r['metric']}: {_number(r['ours'])} {r['unit']} against {_number(r['baseline'])} "
                             f"{r['unit']} ({r['baseline_label']}), {r['speedup']:.2f}x; target {r['target']}: {met}")
    return lines


def projection(results: dict[str, dict]) -> list[str]:
    """bench_restore.py's projection for the paper's models, from its measured seconds per region scalar."""
    restore = next((r for name, r in results.items() if name.startswith("restore") and "projection" in r), None)
    if restore is None:
        return []
    p = restore["projection"]
    lines = ["", f"Projection, not a measurement: selection and restoration of {p['ratios']} ratios on this machine's CPU "
             f"(weight copies in memory), from the seconds per region scalar of the `{restore['workload']}` restoration run; "
             "loading and saving the models are left out.", "",
             "| model | region scalars | sft_knowledge | ParamRestore |", "|---|---|---|---|"]
    for model, m in p["models"].items():
        lines.append(f"| {model} | {m['region_scalars'] / 1e9:.2f}B | {m['ours'] / 60:.1f} min | {m['baseline'] / 60:.1f} min |")
    return lines


def levels(counts: list[int]) -> str:
    return " / ".join(f"{n:,}" for n in counts)


def world(results: dict[str, dict]) -> list[str]:
    """bench_make_run.py's check of the embedded world: its level counts and the paper's effects the grid shows."""
    w = results.get("make_run", {}).get("world")
    if not w:
        return []
    gains = ", ".join(f"{cell} {v['unrestored']} -> {v['best_of_10_20']}" for cell, v in sorted(w["restoring_10_20_pct_at_1920"].items()))
    return ["", f"`make run`'s world (its cold run), level counts D-0..D-4: "
            + "; ".join(f"{split} {levels(counts)}" for split, counts in w["level_counts"].items()) + ". "
            f"D-0 training worst at every size: {'yes' if w['d0_worst_at_every_size'] else 'no'}; "
            f"SFT on 240 D-4 facts answers {w['d4_240_acc_on_d_test_4']}% of D_test-4; "
            f"Acc_test of the 1,920-fact models unrestored -> best of 10% and 20% restored: {gains}."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick runs' results (results/quick/)")
    args = parser.parse_args()
    folder = RESULTS / "quick" if args.quick else RESULTS
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    results = {name: found[name] for name in ORDER if name in found} | {n: r for n, r in found.items() if n not in ORDER}
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['cores']} cores ({r['machine']['host']})"
                       for r in results.values() if "machine" in r})
    dates = sorted(d for r in results.values() if (d := r.get("date") or r.get("measured_at")))
    measured = " to ".join(sorted({dates[0][:10], dates[-1][:10]})) if dates else "?"
    about = ("Machine: " + ("; ".join(machines) or "not recorded") + f"; measured {measured}. Speed-up: how many times better "
             "ours is than the baseline measured in the same run (baseline / ours for times and sizes, ours / baseline for rates).")
    body = [table(results), *world(results), *projection(results)]
    text = "\n".join([f"# Benchmarks{' (quick: tiny sizes, not measurements)' if args.quick else ''}", "",
                      f"Generated by `benchmarks/report.py` on {time.strftime('%Y-%m-%d %H:%M')} from the JSON files beside this one.",
                      about, "", *body, ""])
    (folder / "README.md").write_text(text)
    if not args.quick and RESULTS.resolve() == (README.parent / "benchmarks" / "results").resolve():  # not a test's results
        update_readme("\n".join([about, "", *headlines(results), *world(results),
                                  "", "The whole table, with the projection to LLaMA-3 sizes: [benchmarks/results/README.md](benchmarks/results/README.md)."]))
    print(text)


def update_readme(block: str) -> None:
    """Replace what stands between the README's BEGIN and END lines with `block`."""
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {README} has no benchmarks table markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
