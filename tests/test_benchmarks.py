"""The benchmark suite runs: every script in its quick mode writes its result, and the report tables them all.
Times are never asserted (the machine may be loaded); what is checked is that each run measured both methods."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
QUICK = ["bench_restore.py", "bench_sft.py", "bench_decoding.py", "bench_parallel.py"]  # make bench-quick's scripts


def bench_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, SFT_KNOWLEDGE_BENCH_RESULTS=str(tmp_path / "results"), SFT_KNOWLEDGE_BENCH_WORK=str(tmp_path / "work"))


def test_the_makefile_runs_every_benchmark_and_the_report():
    make = (ROOT / "Makefile").read_text()
    bench = make[make.index("\nbench:"):make.index("\nbench-quick:")]
    quick = make[make.index("\nbench-quick:"):make.index("\nreport:")]
    assert all(script in bench for script in [*QUICK, "bench_make_run.py", "report.py"])
    assert all(f"{script} --quick" in quick for script in QUICK) and "report.py --quick" in quick


def test_the_report_reads_the_make_run_benchmark_format(tmp_path):
    (tmp_path / "results").mkdir()
    bench = json.loads((BENCH / "results" / "make_run.json").read_text())
    bench["world"]["level_counts"] = {"train": [2000, 1921, 1920, 3000, 12345], "test": [75, 1, 0, 9, 10]}
    bench["world"]["restoring_10_20_pct_at_1920"] = {"d4/1920": {"unrestored": 22.4, "best_of_10_20": 30.2}}
    (tmp_path / "results" / "make_run.json").write_text(json.dumps(bench))
    readme = (ROOT / "README.md").read_text()
    subprocess.run([sys.executable, str(BENCH / "report.py")], env=bench_env(tmp_path), check=True, capture_output=True)
    table = (tmp_path / "results" / "README.md").read_text()
    assert "| make_run | make run, cold |" in table and "(budget)" in table
    assert ("`make run`'s world (its cold run), level counts D-0..D-4: train 2,000 / 1,921 / 1,920 / 3,000 / 12,345; "
            "test 75 / 1 / 0 / 9 / 10. D-0 training worst at every size: ") in table
    assert "restored: d4/1920 22.4 -> 30.2." in table
    assert (ROOT / "README.md").read_text() == readme  # a test's results never reach the project's README


@pytest.mark.slow
def test_every_benchmark_runs_in_its_quick_mode_and_the_report_tables_them(smoke_cache, tmp_path):
    shutil.copytree(smoke_cache, tmp_path / "work" / "smoke" / "cache")  # the warm smoke world the benchmarks expect
    env = bench_env(tmp_path)
    for script in QUICK:
        proc = subprocess.run([sys.executable, str(BENCH / script), "--quick"], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    subprocess.run([sys.executable, str(BENCH / "report.py"), "--quick"], env=env, check=True, capture_output=True)
    folder = tmp_path / "results" / "quick"
    results = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert sorted(results) == ["parallel", "probe", "restore", "sft"]
    for name, result in results.items():
        assert result["quick"] and result["machine"]["cores"] >= 1 and result["rows"], name
        assert all(r["ours"] > 0 and r["baseline"] > 0 and r["speedup"] > 0 for r in result["rows"]), name
    assert results["probe"]["greedy_identical"] and results["restore"]["projection"]["models"]["LLaMA-3-8B"]["ours"] > 0
    table = (folder / "README.md").read_text()
    assert all(f"| {name} |" in table for name in results) and "Projection, not a measurement" in table


def gpu_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_check.py on the CPU (no GPU visible, one thread), its result in tmp_path/gpu.json."""
    env = bench_env(tmp_path) | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), *args, "--out", str(tmp_path / "gpu.json")], env=env,
                          capture_output=True, text=True)


def test_make_gpu_check_runs_the_gpu_check():
    make = (ROOT / "Makefile").read_text()
    target = make[make.index("\ngpu-check:") + 1:].split("\n\n")[0].splitlines()
    assert " gpu-check " in make[make.index(".PHONY"):].splitlines()[0] and "## " in target[0]
    assert target[1:] == ["\t$(PY) benchmarks/gpu_check.py"]


def test_the_gpu_check_without_a_gpu_is_one_error_line(tmp_path):
    proc = gpu_check(tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: gpu_check needs a CUDA GPU") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "gpu.json").exists()


def test_the_gpu_check_stops_at_its_budget_and_says_so(tmp_path):
    proc = gpu_check(tmp_path, "--tiny", "--budget-s", "0.001")
    assert proc.returncode == 1 and "did not finish" in proc.stderr
    stages = json.loads((tmp_path / "gpu.json").read_text())["stages"]
    assert list(stages) == ["setup", "sft", "restore", "fsdp", "trainer", "probe"]
    assert stages["setup"]["status"] in ("interrupted", "skipped")  # the alarm comes inside the stage or just before it
    assert all(st["status"] == "skipped" and "budget of 0.001 s" in st["note"] for name, st in stages.items() if name != "setup")


@pytest.mark.slow  # a subprocess that spawns an FSDP worker (about 10 s on one thread)
def test_the_gpu_check_runs_every_stage_at_toy_shapes_on_the_cpu(tmp_path):
    proc = gpu_check(tmp_path, "--tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"wrote {tmp_path / 'gpu.json'}" in proc.stdout
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["tiny"] and result["device"]["name"] == "cpu" and result["device"]["torch"].startswith("2.")
    stages = result["stages"]
    assert {name: st["status"] for name, st in stages.items()} == dict.fromkeys(
        ["setup", "sft", "restore", "fsdp", "trainer", "probe"], "ok"), {n: st.get("error") for n, st in stages.items()}
    n_params, steps = result["model"]["n_params"], result["settings"]["steps"]
    assert stages["setup"]["vocab"] == result["model"]["shape"]["vocab_size"] and stages["setup"]["facts"] == 8 * steps
    for precision, bytes_per_param in (("fp32_master", 16), ("pure", 8)):
        p = stages["sft"]["precisions"][precision]
        assert p["steps"] == steps and p["tokens_per_s"] > 0 and p["peak_gpu_gib"] is None  # no GPU: no GPU memory
        assert p["estimate_gib"] > bytes_per_param * n_params / 2**30  # the plan's: the states plus activations
        share = p["update_share_pct"]
        assert share["100"] == pytest.approx(100, abs=1e-6) and 0 < share["1"] <= share["20"] <= share["100"] + 1e-6
    fp32, pure = (stages["sft"]["precisions"][p]["estimate_gib"] for p in ("fp32_master", "pure"))
    assert fp32 - pure == pytest.approx(8 * n_params / 2**30)  # fp32 master weights and moments: 8 more bytes per parameter
    restore = stages["restore"]
    assert restore["restored_as_selected"] and restore["passes"] == 2 and restore["ratios"] == [1, 3, 5, 10, 20, 40, 60]
    per_ratio = restore["per_ratio"]
    assert [per_ratio[str(r)]["k"] for r in restore["ratios"]] == [round(r / 100 * restore["n_region"]) for r in restore["ratios"]]
    # Every scalar selected that SFT changed is set back, and no other: min(k, changed) scalars leave their fine-tuned value.
    assert all(p["moved_back"] == min(p["k"], restore["changed"]) for p in per_ratio.values())
    fsdp = stages["fsdp"]
    assert fsdp["backend"] == "gloo" and fsdp["steps"] == steps and fsdp["agrees"]
    assert fsdp["loss_first"] == pytest.approx(fsdp["single_loss_first"], rel=2e-2)
    assert stages["trainer"]["ours_tokens_per_s"] > 0 and stages["trainer"]["trainer_tokens_per_s"] > 0
    probe = stages["probe"]
    assert sum(probe["hf"]["level_counts"]) == probe["facts"] and probe["hf"]["facts_per_s"] > 0
    assert probe["vllm"]["status"] == "skipped" and "agreement" not in probe
    assert [r["baseline_label"] for r in result["rows"]] == ["HF Trainer"]  # no GPU memory row on the CPU
