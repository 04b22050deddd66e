"""The recipe's cache keys: SFT's key holds what changes the weights and the KL curve measured during SFT, no more."""
import torch

from sft_knowledge.config import Config, effective
from sft_knowledge.recipe import KLReference, Mastery, sft_spec


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
