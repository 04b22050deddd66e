"""The proof on this machine: a real pretrained model (SmolLM2-135M-Instruct) on the real data (EntityQuestions),
every stage end to end on a small pre-screened subset, with the levels a small model leaves empty."""
import json

import pytest

from sft_knowledge.data import entityquestions as eq

pytestmark = pytest.mark.slow

# Small enough for CI on 2 cores: 60 candidates per split pre-screened, 8 kept, probed 3 x 3.
SMALL = ("data.size=8", "data.subset.candidates=60", "data.subset.keep=8", "data.subset.n_map=2",
         "probe.n_map=3", "probe.n_sample=3", "restore.ratios=[0,5,40]")


@pytest.fixture(scope="module")
def eq_run(cli, tmp_path_factory):
    if not (eq.default_root() / "train").is_dir():
        pytest.skip(f"EntityQuestions is not at {eq.default_root()} (set {eq.ROOT_ENV} to its folder)")
    out = tmp_path_factory.mktemp("eq")
    proc = cli(*SMALL, output_dir=out, cache_dir=out / "cache", experiment="eq_smollm2_small")
    [path] = list(out.glob("runs/*/results.json"))
    return json.loads(path.read_text()), proc, out


def test_smollm2_on_entityquestions_end_to_end(eq_run):
    r, proc, _ = eq_run
    assert r["config"]["model"]["name"] == "smollm2_135m" and r["config"]["data"]["name"] == "entityquestions"
    counts = r["level_counts"]
    assert [sum(c) for c in counts.values()] == [8, 8, 8]
    populated = [lv for lv in range(5) if counts["test"][lv]]
    assert len({lv for c in counts.values() for lv in range(5) if c[lv]}) > 1, f"all facts in one level: {counts}"
    assert populated[0] == 0 and len(populated) > 1, counts
    # Empty levels are missing, never 0, and the macro mean says over which levels it was taken.
    assert [lv for lv, a in enumerate(r["acc_test_level"]) if a is not None] == r["acc_test_over_levels"] == populated
    # After SFT the model answers the facts it knew better than those it did not.
    assert r["acc_test_level"][populated[-1]] > r["acc_test_level"][0], r["acc_test_level"]
    assert [x["ratio"] for x in r["restore"]] == [0, 5, 40] and all(x["acc_test"] is not None for x in r["restore"])
    kept = r["kl_filter"]  # the D_test-4 facts whose answer begins within the base model's first greedy tokens
    assert kept["n_candidates"] == counts["test"][4] and 0 <= kept["n_kept"] <= kept["n_candidates"]
    if kept["n_kept"]:
        assert r["kl"]["n"] == kept["n_kept"]
    else:
        reason = f"none of the {counts['test'][4]} D_test-4 facts" if counts["test"][4] else "D_test-4 holds no facts"
        assert r["kl"]["missing"].startswith(reason) and "mean" not in r["kl"]
    assert "KL" in proc.stdout and "pre-screened subset" in proc.stdout
    # The PyPI model is Q4_1-quantised: its grid leaves exact zeros, counted in every run (deterministic dequantisation)
    assert r["base_zeros"]["transformer"] == {"zeros": 33483, "scalars": 106168320}
    assert "base scalars exactly 0 (restore.zeros=guarded; docs/choices.md): transformer 33,483 of 106,168,320" in proc.stdout
    assert r["probe_templates"] == {"set": "all", "per_relation": dict.fromkeys(eq.IN_DOMAIN + eq.OUT_OF_DOMAIN, 3)}


def test_training_on_a_too_small_level_is_one_line_with_every_level_count(cli, eq_run):
    r, _, out = eq_run
    counts = r["level_counts"]["train"]
    # The thinnest train level of this machine's probe (a 135M model leaves D-3/D-4 empty or nearly so) and one
    # fact more than it holds: never one machine's numbers, since the probe's floats differ between CPU kernels.
    thin = min(range(5), key=counts.__getitem__)
    size = counts[thin] + 1
    overrides = [o for o in SMALL if not o.startswith("data.size=")] + [f"data.size={size}", f"mastery=d{thin}"]
    proc = cli(*overrides, output_dir=out, cache_dir=out / "cache", experiment="eq_smollm2_small", check=False)
    shown = ", ".join(f"D-{lv} {n}" for lv, n in enumerate(counts))
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == \
        f"error: data.size={size} is larger than the bucket, which holds {counts[thin]} facts (mastery=d{thin}; train levels: {shown})"
    assert len(list(out.glob("runs/*/results.json"))) == 1  # no result for the failed run
