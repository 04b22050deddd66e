"""The mastery probe on a small pretrained world: sampling (the definition) against the likelihood estimate."""
import pytest
import torch

from sft_knowledge.cache import Cache
from sft_knowledge.data.facts import KnowledgeBase
from sft_knowledge.models import build_tiny_world, load
from sft_knowledge.config import ProbeConfig
from sft_knowledge.data.synthetic import build_world
from sft_knowledge.probe import probe

pytestmark = pytest.mark.slow


def test_sampling_and_likelihood_put_facts_in_the_same_levels(compose, smoke_cache):
    cfg = compose("experiment=smoke", f"paths.cache_dir={smoke_cache}")
    world = build_world(cfg.data.world)
    path, hit = build_tiny_world(Cache(smoke_cache), world, cfg.model.pretrain, cfg.data.world)
    assert hit
    model, tokenizer = load(path)
    kb = KnowledgeBase(world.kb.relations, {"train": world.kb.splits["train"][:300], "test": [], "testood": []})
    sampled = probe(model, tokenizer, kb, ProbeConfig(n_map=3, n_sample=10, max_new_tokens=12))
    expected = probe(model, tokenizer, kb, ProbeConfig(n_map=3, n_sample=10, estimator="likelihood"))
    same = sum(a == b for a, b in zip(sampled.level["train"], expected.level["train"])) / 300
    within_one = sum(abs(a - b) <= 1 for a, b in zip(sampled.level["train"], expected.level["train"])) / 300
    corr = torch.corrcoef(torch.tensor([sampled.rate["train"], expected.rate["train"]]))[0, 1].item()
    print(f"\nsampling vs likelihood on 300 facts, 3 templates x 10 samples: same level {same:.0%}, "
          f"within one level {within_one:.0%}, correlation of R {corr:.3f}; levels {sampled.counts('train')} vs {expected.counts('train')}")
    assert corr > 0.85 and same > 0.6 and within_one > 0.95
    assert len(set(sampled.level["train"])) >= 3  # the small world is not all one level
