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
