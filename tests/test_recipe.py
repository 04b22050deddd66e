"""The recipe's cache keys: SFT's key holds what changes the weights and the KL curve measured during SFT, no more;
and a SliCK bucket's SFT subset."""
import pytest
import torch

from sft_knowledge.config import Config, effective
from sft_knowledge.data.facts import Fact, KnowledgeBase
from sft_knowledge.errors import DataError
from sft_knowledge.probe import ProbeResult
from sft_knowledge.recipe import Categories, KLReference, Mastery, sft_spec, sft_subset
from sft_knowledge.slick import SlickResult


def _spec(cfg: Config, prompts: list[str], top_k: int = 10, points: int = 5) -> dict:
    kl_ref = KLReference(prompts, prompts, torch.zeros(len(prompts), 4), top_k, points, answer_filter=None)
    return sft_spec(cfg, effective(cfg), Mastery(levels=None, spec={"probe": 1}, hit=True), kl_ref)


def test_evaluation_and_final_kl_settings_are_not_in_the_sft_key():
    cfg, other = Config(), Config()
    other.eval.seed, other.eval.max_per_level, other.kl.max_facts, other.kl.level = 7, 20, 100, 3
    # the KL settings reach the key only through the prompts they select and the curve's top-k and points
    assert _spec(cfg, ["q1", "q2"]) == _spec(other, ["q1", "q2"])


def test_the_kl_curve_inputs_are_in_the_sft_key_only_when_a_curve_is_measured():
    cfg = Config()
    assert _spec(cfg, ["q1", "q2"]) != _spec(cfg, ["q1", "q3"])
    assert _spec(cfg, ["q1"], top_k=10) != _spec(cfg, ["q1"], top_k=5)
    assert _spec(cfg, ["q1"], points=5) != _spec(cfg, ["q1"], points=3)
    # without a curve (kl.curve_points=0, or no fact kept), sweeping KL settings retrains nothing
    assert _spec(cfg, ["q1"], top_k=10, points=0) == _spec(cfg, ["q2"], top_k=5, points=0) == _spec(cfg, [], top_k=3)
    assert _spec(cfg, ["q1"], points=0)["kl_curve"] is None


def test_what_changes_the_weights_is_in_the_sft_key():
    base = _spec(Config(), ["q"])
    for change in ("train.lr", "train.epochs", "seed", "data.seed", "data.size", "mastery.bucket", "model.micro_batch_size"):
        cfg = Config()
        section, _, key = change.rpartition(".")
        target = getattr(cfg, section) if section else cfg
        setattr(target, key, {"train.lr": 0.5, "train.epochs": 2.0, "seed": 1, "data.seed": 1, "data.size": 60,
                              "mastery.bucket": "d2", "model.micro_batch_size": 2}[change])
        assert _spec(cfg, ["q"]) != base, change


def test_a_slick_bucket_trains_on_its_category_and_keys_sft_by_slicks_entry():
    train = [Fact(f"S{i}", "P19" if i % 2 else "P36", f"O{i}", f"Q{i}?") for i in range(12)]
    kb = KnowledgeBase({}, {"train": train, "test": [], "testood": []})
    levels = ProbeResult({}, {"train": [4] * 12, "test": [], "testood": []})
    codes = [2, 0, 2, 2, 1, 3, 2, 0, 0, 2, 3, 2]  # maybe_known: facts 0, 2, 3, 6, 9, 11
    slick = Categories(SlickResult({}, {}, {"train": codes, "test": [], "testood": []}), {"slick": "entry"}, True)
    mastery = Mastery(levels, {"probe": 1}, True, slick)
    cfg = Config()
    cfg.probe.categories, cfg.mastery.bucket, cfg.data.size = "levels_and_slick", "maybe_known", 4
    picked = sft_subset(cfg, kb, mastery)
    assert len(picked) == 4 and {f.subject for f in picked} <= {"S0", "S2", "S3", "S6", "S9", "S11"}
    assert sorted(f.relation for f in picked) == ["P19", "P19", "P36", "P36"]  # balanced over relations, as level buckets
    cfg.data.size = 7
    with pytest.raises(DataError, match=r"data.size=7 is larger than the bucket, which holds 6 facts \(mastery=maybe_known; "
                                        r"train SliCK categories: unknown 3, weakly_known 1, maybe_known 6, highly_known 2\)"):
        sft_subset(cfg, kb, mastery)
    kl_ref = KLReference(["q"], ["q"], torch.zeros(1, 4), 10, 5, answer_filter=None)
    spec = sft_spec(cfg, effective(cfg), mastery, kl_ref)
    assert spec["slick"] == {"slick": "entry"} and spec["probe"] == {"probe": 1}
    cfg.mastery.bucket = "d4"  # a level bucket's SFT key is the one it had before SliCK existed, SliCK or not
    assert "slick" not in sft_spec(cfg, effective(cfg), mastery, kl_ref)
