"""The whole pipeline from the command line on a small world: results, caching, sweeps, bad input."""
import json
import shutil
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

RESTORE_FIELDS = {"ratio", "strategy", "region", "acc_test", "acc_testood", "acc_test_level", "acc_testood_level", "acc_train"}


def _results(output_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((output_dir / "runs").glob("*/results.json"))]


def test_run_writes_every_result_field_and_reuses_the_cache(cli, smoke_cache, tmp_path):
    proc = cli(output_dir=tmp_path, cache_dir=smoke_cache)
    [r] = _results(tmp_path)
    for key in ("config", "run_key", "provenance", "acc_test", "acc_testood", "acc_train", "kl_level", "kl", "kl_curve",
                "restore", "update_share", "timings", "level_counts", "kl_filter"):
        assert key in r, key
    assert len(r["acc_test_level"]) == len(r["acc_testood_level"]) == 5
    assert r["provenance"]["git_sha"] and "torch" in r["provenance"]["packages"]
    assert r["cache_hits"] == {"base_model": True, "probe": True, "sft": True}  # the session fixture ran this config
    assert [x["ratio"] for x in r["restore"]] == [0, 5, 20, 60] and all(RESTORE_FIELDS <= set(x) for x in r["restore"])
    assert r["restore"][0]["acc_test"] == r["acc_test"] and r["restore"][0]["n_restored"] == 0
    assert r["restore"][0]["acc_train"] == r["acc_train"] and all(0 <= x["acc_train"] <= 100 for x in r["restore"])
    assert set(r["update_share"]) == {"1", "3", "5", "10", "20", "40", "60"}
    assert set(r["base_zeros"]) == {"transformer", "attention", "mlp", "embedding", "all"}
    assert r["base_zeros"]["transformer"]["scalars"] == r["restore"][0]["n_region"]
    assert r["probe_templates"]["set"] == "all" and set(r["probe_templates"]["per_relation"].values()) == {3}
    assert 0 < r["update_share"]["1"] < r["update_share"]["20"] < r["update_share"]["60"] <= 100
    assert r["kl_level"] == 4 and r["kl"]["mean"] >= 0 and len(r["kl_curve"]) == 3
    # The KL's facts: D_test-4's whose answer begins within the base model's first 3 greedy tokens (the default).
    kept = r["kl_filter"]
    assert kept["answer_within_tokens"] == 3 and kept["n_candidates"] == r["level_counts"]["test"][4]
    assert 0 < kept["n_kept"] == r["kl"]["n"] == sum(kept["kept_by_start"]) <= kept["n_candidates"]
    # the KL curve is measured on the same facts: its last point, after the last step, is the final KL
    assert r["kl_curve"][-1]["step"] == len(r["train_loss"]) and r["kl_curve"][-1]["kl_mean"] == pytest.approx(r["kl"]["mean"], rel=1e-5)
    assert "accuracy (%)" in proc.stdout and "results:" in proc.stdout

    # The same command again recomputes nothing and leaves the finished result alone.
    results_file = tmp_path / "runs" / r["run_key"] / "results.json"
    stamp = results_file.stat().st_mtime_ns
    again = cli(output_dir=tmp_path, cache_dir=smoke_cache)
    assert "already done" in again.stdout and results_file.stat().st_mtime_ns == stamp


def test_without_the_answer_filter_the_kl_covers_every_d_test_4_fact(cli, smoke_cache, tmp_path):
    cli("kl.answer_within_tokens=null", "kl.position=first_token", output_dir=tmp_path, cache_dir=smoke_cache)
    [every], [kept] = _results(tmp_path), _results(smoke_cache.parent / "warmup")  # the fixture's run: the default filter
    n = every["level_counts"]["test"][4]
    assert every["kl_filter"] == {"answer_within_tokens": None, "n_candidates": n, "n_kept": n, "kept_by_start": None}
    assert every["kl"]["n"] == n and every["kl_curve"][-1]["kl_mean"] == pytest.approx(every["kl"]["mean"], rel=1e-5)
    assert every["acc_test"] == kept["acc_test"]  # the filter changes what the KL is taken over, not the fine-tuning
    if kept["kl_filter"]["n_kept"] == n:  # the filter kept every fact: the same KL
        assert every["kl"]["mean"] == pytest.approx(kept["kl"]["mean"], rel=1e-5)


def test_new_restore_ratios_reuse_probe_and_fine_tuned_weights(cli, smoke_cache, tmp_path):
    # eval.seed draws evaluation subsets and, only under kl.max_facts, the KL's facts: the KL curve measured during
    # SFT is the same, so the fine-tuned weights are reused (SFT's key holds the curve's inputs, not eval or kl).
    cli("restore.ratios=[0,10]", "restore.strategy=random", "eval.seed=3", output_dir=tmp_path, cache_dir=smoke_cache)
    [r] = _results(tmp_path)
    assert r["cache_hits"] == {"base_model": True, "probe": True, "sft": True}
    assert [x["strategy"] for x in r["restore"]] == ["random", "random"]


def test_multirun_2x2_into_a_sweep_directory(cli, smoke_cache, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "data.size=20,40", "seed=0,1", f"hydra.sweep.dir={sweep}", "restore.ratios=[0,10]",
                   output_dir=tmp_path, cache_dir=smoke_cache)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]
    assert all(json.loads((sweep / n / "run.json").read_text())["status"] == "done" for n in "0123")
    runs = _results(tmp_path)
    assert sorted((x["config"]["data"]["size"], x["config"]["seed"]) for x in runs) == [(20, 0), (20, 1), (40, 0), (40, 1)]
    assert "4 of 4 cells done" in (sweep / "summary.txt").read_text() and "4 of 4 cells done" in proc.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("mastery=d9", "error: mastery=d9 is not an option of 'mastery': choose one of all, d0, d1, d2, d3, d4"),
        ("restore.ratios=[0,150]", "error: restore.ratios=150 is not allowed: expected percentages in [0, 100]"),
        ("data.size=100000", "error: data.size=100000 is larger than the bucket, which holds"),
    ],
)
def test_bad_input_is_one_line_and_writes_no_result(cli, smoke_cache, tmp_path, override, message):
    proc = cli(override, output_dir=tmp_path, cache_dir=smoke_cache, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[0].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert _results(tmp_path) == []


def test_corrupt_cache_entry_is_reported_and_left_alone(cli, smoke_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(smoke_cache, cache)
    weights = list((cache / "sft").glob("*/model.safetensors"))  # other tests may have added entries: damage all
    for w in weights:
        w.write_bytes(w.read_bytes()[:1000])
    proc = cli(output_dir=tmp_path, cache_dir=cache, check=False)
    assert proc.returncode != 0
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: cache entry {cache / 'sft'}/") and "is corrupt: model.safetensors has 1000 bytes" in line
    assert all(w.stat().st_size == 1000 for w in weights) and _results(tmp_path) == []


def test_offline_tracking_writes_wandb_run_and_metrics(cli, smoke_cache, tmp_path):
    cli("logger.mode=offline", "logger.log_predictions=true", "restore.ratios=[0,20]", "eval.max_per_level=20",
            output_dir=tmp_path, cache_dir=smoke_cache)
    [r] = _results(tmp_path)
    assert r["tracking"] == {"mode": "offline", "wandb": "on", "reason": None}
    run_dir = tmp_path / "runs" / r["run_key"]
    [offline] = list((run_dir / "wandb").glob(f"offline-run-*-{r['run_key']}"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = {k: v for rec in records if "step" in rec for k, v in rec.items()}  # the last value of each metric
    assert {"train/loss", "train/lr", "kl/curve_mean", "kl/mean", "eval/acc_train", "restore/acc_test", "restore/acc_train",
            "restore/ratio"} <= set(scalars)
    assert [rec["restore/acc_train"] for rec in records if "restore/acc_train" in rec] == [x["acc_train"] for x in r["restore"]]
    assert [rec["train/loss"] for rec in records if "train/loss" in rec] == r["train_loss"]
    assert [rec["step"] for rec in records if "kl/curve_mean" in rec] == [p["step"] for p in r["kl_curve"]]
    [final] = [rec for rec in records if "eval/acc_test" in rec]
    for split in ("test", "testood"):
        assert final[f"eval/acc_{split}"] == r[f"acc_{split}"]
        assert {k: v for k, v in final.items() if k.startswith(f"eval/acc_{split}/")} == {
            f"eval/acc_{split}/D-{lv}": a for lv, a in enumerate(r[f"acc_{split}_level"]) if a is not None}
    tables = {rec["table"]: rec for rec in records if "table" in rec}
    assert tables["restore/acc_vs_ratio"]["data"] == [[x["ratio"], s, x[f"acc_{s}"]] for s in ("test", "testood") for x in r["restore"]]
    assert tables["restore/acc_vs_ratio"]["line"]["x"] == "ratio"
    # The predictions table (logger.log_predictions) holds every evaluated fact and gives back the accuracy per level.
    rows = tables["eval/predictions"]["data"]
    for split in ("test", "testood"):
        for lv in range(5):
            hits = [row[-1] for row in rows if row[0] == split and row[1] == f"D-{lv}"]
            assert len(hits) == r[f"n_{split}_level"][lv]
            assert (round(100 * sum(hits) / len(hits), 2) if hits else None) == r[f"acc_{split}_level"][lv]
    assert [rec for rec in records if "artifact" in rec] == [{"artifact": f"results-{r['run_key']}", "type": "results", "path": str(run_dir / "results.json")}]
    stored = [p.relative_to(offline / "files" / "media" / "table").as_posix() for p in offline.glob("files/media/table/**/*.table.json")]
    assert any(t.startswith("restore/acc_vs_ratio_table_") for t in stored) and any(t.startswith("eval/predictions_") for t in stored)


def test_slick_categories_run_beside_the_levels_and_a_slick_bucket_trains_on_its_category(cli, compose, smoke_cache, tmp_path):
    """probe=slick mastery=maybe_known on the smoke world (SliCK's budget cut to 2 prompts, 1 sample, 4 tokens): the paper
    probe's cache entry serves it, the categories add up to the levels' facts, and SFT trains on MaybeKnown facts."""
    from sft_knowledge.data.synthetic import build_world
    from sft_knowledge.recipe import Categories, Mastery, sft_subset
    from sft_knowledge.slick import SlickResult

    run = ("probe=slick", "probe.slick.n_prompts=2", "probe.slick.n_samples=1", "probe.slick.max_new_tokens=4",
           "mastery=maybe_known", "data.size=8")
    cli(*run, "restore.ratios=[0]", output_dir=tmp_path, cache_dir=smoke_cache)
    [r] = _results(tmp_path)
    assert r["cache_hits"]["probe"] and not r["cache_hits"]["slick"]  # probe=paper's entry; SliCK's is its own
    for split, levels in r["level_counts"].items():
        counts, table = r["slick_counts"][split], r["cross_tab"][split]
        assert sum(counts.values()) == sum(levels)
        assert [sum(row.values()) for row in table.values()] == levels  # a level's facts over the categories
        assert {c: sum(row[c] for row in table.values()) for c in counts} == counts  # a category's over the levels
    for split in ("test", "testood"):  # every fact evaluated once in its category (no eval.max_per_level)
        assert {c: a["n"] for c, a in r["acc_slick"][split].items()} == r["slick_counts"][split]
        assert all((a["acc"] is None) == (a["n"] == 0) for a in r["acc_slick"][split].values())
    records = [json.loads(line) for line in (tmp_path / "runs" / r["run_key"] / "metrics.jsonl").read_text().splitlines()]
    [final] = [rec for rec in records if "eval/acc_test" in rec]
    assert {k: v for k, v in final.items() if k.startswith("eval/slick/")} == {
        f"eval/slick/{c}/acc_{s}": a["acc"] for s in ("test", "testood") for c, a in r["acc_slick"][s].items() if a["n"]}
    # SFT's facts: 8 of the train split's MaybeKnown by the cached categories, and SFT's cache key names that entry.
    [entry] = (smoke_cache / "slick").glob("*/slick.json")
    slick_spec = json.loads((entry.parent / "DONE.json").read_text())["spec"]
    categories = SlickResult(**json.loads(entry.read_text()))
    cfg = compose("experiment=smoke", *run)
    kb = build_world(cfg.data.world).kb
    facts = sft_subset(cfg, kb, Mastery(None, {}, True, Categories(categories, slick_spec, True)))
    train = kb.splits["train"]
    assert len(facts) == r["n_train_facts"] == 8
    assert all(categories.category["train"][train.index(f)] == categories.codes["maybe_known"] for f in facts)
    sft_specs = [json.loads(p.read_text())["spec"] for p in (smoke_cache / "sft").glob("*/DONE.json")]
    assert [s["slick"] for s in sft_specs if s["bucket"] == "maybe_known"] == [slick_spec]
