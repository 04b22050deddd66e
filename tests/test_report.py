"""The report: the paper's tables and figures from a sweep, with the numbers of the runs' results.json."""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from sft_knowledge.config import digest
from sft_knowledge.report import Paper, main, write_report

FIGURES = ("figure2_acc_vs_size.png", "figure4_acc_test4.png", "figure5_kl.png")
TABLES = ("cells.csv", "figure2_acc_vs_size.csv", "table2_bucket_x_level.csv", "figure4_5_acc_test4_kl.csv",
          "table4_restoration.csv", "table3_update_share.csv")


def _config(bucket: str, size, seed: int = 0, model: str = "tiny_world", data: str = "synthetic", strategy: str = "top") -> dict:
    return {"model": {"name": model}, "data": {"name": data, "size": size, "seed": 0}, "mastery": {"bucket": bucket},
            "train": {"method": "full"}, "restore": {"strategy": strategy, "region": "transformer", "ratios": [0, 20]},
            "seed": seed}


def _results(config: dict, acc: float) -> dict:
    """A results.json with the fields the report reads; accuracies derived from `acc` so each cell differs."""
    levels = [acc + lv for lv in range(5)]
    return {"run_key": f"{config['model']['name']}-{config['mastery']['bucket']}-{config['data']['size']}-{digest(config)}",
            "config": config, "n_train_facts": config["data"]["size"], "acc_test": statistics.fmean(levels),
            "acc_test_level": levels, "acc_testood": acc / 2, "acc_testood_level": [acc / 2] * 5, "kl_level": 4,
            "kl": {"mean": acc / 10}, "kl_test4": acc / 10,
            "restore": [{"ratio": r, "strategy": config["restore"]["strategy"], "region": "transformer",
                         "acc_test": acc + r / 10, "acc_testood": acc / 2 + r / 10} for r in (0, 20)],
            "update_share": {"1": 70.0 + acc / 100, "20": 92.0}}


def make_sweep(root: Path, jobs: list[dict | tuple[dict, str]]) -> Path:
    """A sweep directory as `run -m` leaves it: a results dict is a finished job, (config, error) a failed one."""
    sweep = root / "sweep"
    for num, job in enumerate(jobs):
        job_dir = sweep / str(num)
        (job_dir / ".hydra").mkdir(parents=True)
        if isinstance(job, tuple):
            config, error = job
            (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "logger": {"mode": "disabled"}}))
            (job_dir / "run.json").write_text(json.dumps({"run_key": "k", "run_dir": str(root / "runs" / "k"), "status": "failed", "error": error}))
            continue
        run_dir = root / "runs" / job["run_key"]
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(job))
        (job_dir / "run.json").write_text(json.dumps({"run_key": job["run_key"], "run_dir": str(run_dir), "status": "done"}))
    return sweep


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cells_over_seeds_are_mean_and_std_and_failed_cells_are_listed(tmp_path):
    sweep = make_sweep(tmp_path, [_results(_config("d2", 240, seed=0), 10.0), _results(_config("d2", 240, seed=1), 14.0),
                                  _results(_config("d4", 240), 20.0), (_config("d4", 60), "DataError: bucket too small")])
    out = write_report(sweep)
    assert {p.name for p in out.iterdir()} == {"report.md", *FIGURES, *TABLES}
    rows = {(r["bucket"], r["split"], r["level"]): r for r in _csv(out / "table2_bucket_x_level.csv")}
    d2 = rows[("d2", "test", "D-3")]
    assert float(d2["mean"]) == 15.0 and float(d2["std"]) == pytest.approx(statistics.stdev([13.0, 17.0])) and d2["n"] == "2"
    assert float(rows[("d4", "test", "macro")]["mean"]) == 22.0 and rows[("d4", "test", "macro")]["std"] == ""
    md = (out / "report.md").read_text()
    assert "| D-2 | 12.00 ± 2.83 |" in md  # D-0 of the two seeds: 10 and 14
    # The failed job is listed with its error, in the table where its cell would be, and in cells.csv.
    assert "| 3 | failed | — | DataError: bucket too small |" in md and "failed (job 3)" in md
    assert [(r["job"], r["status"], r["bucket"], r["size"]) for r in _csv(out / "cells.csv")][3] == ("3", "failed", "d4", "60")
    assert "Paper comparison: none" in md


def test_paper_numbers_stand_beside_ours_only_where_the_setting_matches(tmp_path):
    paper = Paper()
    eq = dict(model="Meta-Llama-3-8B", data="entityquestions")
    assert paper.model(_config("d2", 1920, **eq)) == "llama3_8b"
    assert paper.model(_config("d2", 1920, model="llama2_13b", data="entityquestions")) == "llama2_13b"
    assert paper.model(_config("d2", 1920, model="Meta-Llama-3-8B")) is None  # the synthetic world is no paper setting
    sweep = make_sweep(tmp_path, [_results(_config("d2", 1920, **eq), 60.0), _results(_config("d2", 1920, strategy="random", **eq), 50.0),
                                  _results(_config("d2", 60, **eq), 40.0)])
    out = write_report(sweep)
    t2 = {(r["variant"], r["size"], r["split"], r["level"]): r for r in _csv(out / "table2_bucket_x_level.csv")}
    top = t2[("restore.strategy=top", "1920", "test", "macro")]
    assert float(top["paper"]) == 57.53 and float(top["diff"]) == pytest.approx(62.0 - 57.53)  # paper Table 2, D-2 row
    assert float(t2[("restore.strategy=top", "1920", "testood", "D-4")]["paper"]) == 87.89
    assert t2[("restore.strategy=top", "60", "test", "macro")]["paper"] == ""  # the paper has no 60-fact Table 2
    t4 = {(r["variant"], r["split"], r["ratio"]): r for r in _csv(out / "table4_restoration.csv") if r["size"] == "1920"}
    assert float(t4[("restore.strategy=top", "test", "20")]["paper"]) == 62.21 and float(t4[("restore.strategy=top", "test", "20")]["diff"]) == pytest.approx(62.0 - 62.21)
    assert t4[("restore.strategy=random", "test", "20")]["paper"] == ""  # Table 4 is top-k restoration only
    t3 = [r for r in _csv(out / "table3_update_share.csv") if r["variant"] == "restore.strategy=top" and r["size"] == "1920"]
    assert {r["top_percent"]: (r["paper_min"], r["paper_max"], float(r["diff"])) for r in t3} == {
        "1": ("70.6", "71.1", pytest.approx(0.0)), "20": ("91.8", "92.3", pytest.approx(0.0))}
    md = (out / "report.md").read_text()
    assert "| D-2 [restore.strategy=top] paper | 0.78 | 36.56 |" in md  # Table 2 rows: ours, the paper's, the difference
    assert "| D-2 [restore.strategy=top] ours − paper | +59.22 | +24.44 |" in md
    assert "62.00 (paper 62.21, Δ -0.21)" in md  # Table 4 at 20%


def _report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_knowledge.report", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_bad_input_is_one_line_and_exit_1(tmp_path, monkeypatch):
    not_sweep = tmp_path / "plain"
    not_sweep.mkdir()
    only_failed = make_sweep(tmp_path, [(_config("d0", 60), "DataError: too small")])
    for target, message in [(not_sweep, f"error: {not_sweep} is not a sweep directory"),
                            (tmp_path / "nowhere", f"error: {tmp_path / 'nowhere'} is not a directory"),
                            (only_failed, f"error: no finished run in {only_failed}: 1 jobs (1 failed)")]:
        proc = _report_cli(str(target))
        assert proc.returncode == 1 and proc.stderr.startswith(message) and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (only_failed / "report").exists()
    monkeypatch.chdir(tmp_path)  # no outputs/sweeps here: `make report` without SWEEP has nothing to report
    with pytest.raises(SystemExit, match="error: no sweep under outputs/sweeps"):
        main([])


@pytest.mark.slow
def test_report_from_a_real_sweep_has_every_table_and_figure_with_the_runs_numbers(smoke_cache, smoke_level_counts, tmp_path):
    # Sizes from this machine's own levels (pretraining's floats differ between CPU kernels): the second size is one
    # more than D-0 holds, so that cell (job 1) fails, while D-4 holds enough for both.
    held = smoke_level_counts["train"]
    big = held[0] + 1
    assert 20 <= held[0] and big <= held[4], f"the smoke world's train levels no longer fit this test: {held}"
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "mastery=d0,d4", f"data.size=20,{big}", "restore.ratios=[0,10]", "eval.max_per_level=20",
                   f"hydra.sweep.dir={sweep}", output_dir=tmp_path, cache_dir=smoke_cache, check=False)
    assert proc.returncode != 0
    results = {(r["config"]["mastery"]["bucket"], r["config"]["data"]["size"]): r
               for r in (json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/results.json"))}
    assert set(results) == {("d0", 20), ("d4", 20), ("d4", big)}

    made = _report_cli(str(sweep))
    assert made.returncode == 0, made.stderr
    out = sweep / "report"
    assert {p.name for p in out.iterdir()} == {"report.md", *FIGURES, *TABLES}
    for png in FIGURES:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 20_000

    # Every number in the tables is one of the runs' results.json, and every result is in the tables.
    def check(table: str, value) -> list[dict]:
        rows = _csv(out / table)
        for row in rows:
            r = results[(row["bucket"], int(row["size"]))]
            assert float(row["mean"]) == value(r, row) and row["n"] == "1" and row["std"] == "", (table, row)
        return rows

    t2 = check("table2_bucket_x_level.csv", lambda r, row: r[f"acc_{row['split']}"] if row["level"] == "macro"
               else r[f"acc_{row['split']}_level"][int(row["level"][2])])
    assert len(t2) == sum(a is not None for r in results.values() for s in ("test", "testood") for a in [r[f"acc_{s}"], *r[f"acc_{s}_level"]])
    assert all(row["paper"] == "" for row in t2)  # the embedded world is no paper setting
    t4 = check("table4_restoration.csv", lambda r, row: next(x[f"acc_{row['split']}"] for x in r["restore"] if x["ratio"] == float(row["ratio"])))
    assert len(t4) == 3 * 2 * 2
    t3 = check("table3_update_share.csv", lambda r, row: r["update_share"][row["top_percent"]])
    assert len(t3) == 3 * 7
    metric = {"Acc_test": lambda r: r["acc_test"], "Acc_testood": lambda r: r["acc_testood"],
              "Acc D_test-4": lambda r: r["acc_test_level"][4], "KL on D_test-4": lambda r: r["kl_test4"]}
    assert len(check("figure2_acc_vs_size.csv", lambda r, row: metric[row["metric"]](r))) == 3 * 2
    assert len(check("figure4_5_acc_test4_kl.csv", lambda r, row: metric[row["metric"]](r))) == 3 * 2

    cells = _csv(out / "cells.csv")
    assert [(c["bucket"], c["size"], c["status"]) for c in cells] == [("d0", "20", "done"), ("d0", str(big), "failed"), ("d4", "20", "done"), ("d4", str(big), "done")]
    assert cells[1]["error"].startswith(f"data.size={big} is larger than the bucket, which holds {held[0]} facts")
    md = (out / "report.md").read_text()
    assert "3 of 4 jobs finished" in md and "| 1 | failed |" in md and "failed (job 1)" in md and "Paper comparison: none" in md
    assert f"| D-4 | {big} | {results[('d4', big)]['acc_test']:.2f} | {results[('d4', big)]['acc_testood']:.2f} | 1 |" in md
