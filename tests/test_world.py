"""The synthetic world: deterministic, EntityQuestions-shaped, and gradable without false matches."""
from collections import Counter
from dataclasses import asdict

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft_knowledge.data.facts import normalise
from sft_knowledge.config import PretrainConfig, SyntheticWorldConfig, tiny_world_spec
from sft_knowledge.data.synthetic import build_world
from sft_knowledge.pretrain import estimated_minutes, optimizers, pretrain

SMALL = SyntheticWorldConfig(n_train=500, n_test=200, n_testood=120, n_bridge_per_relation=5, n_background_per_ood_relation=10,
                             pool_scale=0.3)


def test_world_is_deterministic_and_seeded():
    assert build_world(SMALL).kb.splits == build_world(SMALL).kb.splits
    other = build_world(SyntheticWorldConfig(**{**SMALL.__dict__, "seed": 1}))
    assert other.kb.splits != build_world(SMALL).kb.splits


def test_relations_mirror_entityquestions():
    kb = build_world(SMALL).kb
    in_domain = [r for r in kb.relations.values() if r.in_domain]
    assert len(in_domain) >= 10 and len(kb.relations) - len(in_domain) >= 6
    for rel in kb.relations.values():
        assert len(rel.mapping_templates) == 21 and len(set(rel.mapping_templates)) == 21
        assert "[X]" in rel.question_template and all("{subject}" in t for t in rel.mapping_templates)


def test_splits_sizes_domains_and_balance():
    world = build_world(SMALL)
    kb = world.kb
    assert [len(kb.splits[s]) for s in ("train", "test", "testood")] == [500, 200, 120]
    assert all(kb.relations[f.relation].in_domain for s in ("train", "test") for f in kb.splits[s])
    assert not any(kb.relations[f.relation].in_domain for f in kb.splits["testood"])
    assert set(Counter(f.relation for f in kb.splits["train"]).values()) == {50}
    subjects = [f.subject for s in kb.splits.values() for f in s] + [f.subject for f in world.bridge]
    subjects += [f.subject for f, _ in world.background]
    assert len(subjects) == len(set(subjects))  # every fact has its own subject: splits are disjoint


def test_no_object_is_a_substring_of_another():
    kb = build_world(SMALL).kb
    objects = {normalise(f.object) for s in kb.splits.values() for f in s}
    assert not [(a, b) for a in objects for b in objects if a != b and a in b]


def test_corpus_states_facts_by_exposure_and_asks_only_bridge_questions():
    world = build_world(SMALL)
    docs = world.corpus(0, SMALL)
    fact, exposure = max(zip(world.kb.splits["train"], world.exposure["train"]), key=lambda x: x[1])
    assert sum(fact.subject.lower() in d.lower() for d in docs) == exposure > 0
    questions = [d for d in docs if d.startswith("Question:")]
    assert len(questions) == SMALL.bridge_questions * len(world.bridge)
    split_subjects = {f.subject for s in world.kb.splits.values() for f in s}
    assert not any(s in q for q in questions for s in list(split_subjects)[:50])
    assert 0.05 < sum(e == 0 for e in world.exposure["train"]) / 500 < 0.3


def test_background_facts_are_out_of_domain_in_no_split_and_stated_like_split_facts():
    world = build_world(SMALL)
    docs = world.corpus(0, SMALL)
    relations = Counter(f.relation for f, _ in world.background)
    assert len(relations) == 6 and set(relations.values()) == {SMALL.n_background_per_ood_relation}
    assert not any(world.kb.relations[r].in_domain for r in relations)
    exposures = [e for _, e in world.background]
    assert min(exposures) == 0 and max(exposures) <= SMALL.exposure_max
    assert all(e >= SMALL.exposure_min for e in exposures if e)  # the split facts' distribution, not the bridge's
    fact, exposure = max(world.background, key=lambda x: x[1])
    assert sum(fact.subject.lower() in d.lower() for d in docs) == exposure
    assert not any(fact.subject in d for d in docs if d.startswith("Question:"))


def test_pretraining_says_what_it_will_do_before_it_starts(tmp_path, capsys):
    cfg = SyntheticWorldConfig(**{**SMALL.__dict__, "n_train": 40, "n_test": 20, "n_testood": 12})
    docs = build_world(cfg).corpus(0, cfg)
    tiny = PretrainConfig(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, warmup_steps=1)
    stats = pretrain(docs, tiny, tmp_path)
    first_line = capsys.readouterr().out.splitlines()[0]  # printed before the first step, so the user sees it at once
    threads = torch.get_num_threads()
    assert first_line.startswith(f"pretraining tiny_world once (then cached): {stats['tokens'] / 1e6:.1f}M tokens, ")
    assert first_line.endswith(f"about {estimated_minutes(stats['params'], stats['tokens'], threads):.0f} min on {threads} CPU thread(s)")
    # The estimate scales with parameters x tokens: the default model (1.58M parameters) on the default world
    # (14.57M tokens) at 2 threads: `make run`'s base-model stage took 1,170 s, tokenizer and packing included (AMD EPYC
    # VM, 2026-12-05).
    assert abs(estimated_minutes(1_580_000, 14_567_424, 2) * 60 - 1170) < 0.2 * 1170


def test_pretraining_twice_writes_the_same_bytes(tmp_path):
    """`make world` rebuilds the shipped model bit for bit on one machine: weights and tokenizer, not the timing stats."""
    cfg = SyntheticWorldConfig(**{**SMALL.__dict__, "n_train": 40, "n_test": 20, "n_testood": 12})
    docs = build_world(cfg).corpus(0, cfg)
    tiny = PretrainConfig(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, warmup_steps=1)
    for out in ("a", "b"):
        pretrain(docs, tiny, tmp_path / out)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "model.safetensors" in names and names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_pretraining_optimizers_cover_every_parameter_once(optimizer):
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    opts = optimizers(model, PretrainConfig(optimizer=optimizer))
    by_name = {id(p): n for n, p in model.named_parameters()}
    groups = {type(o).__name__: [by_name[id(p)] for g in o.param_groups for p in g["params"]] for o in opts}
    assert sorted(n for names in groups.values() for n in names) == sorted(by_name.values())
    # Muon: the 7 matrices (q, k, v, o, gate, up, down) of each of the 2 decoder layers; AdamW the rest. AdamW decays
    # every matrix it steps (with Muon: the embeddings and the head only), never a norm.
    muon = groups.get("Muon", [])
    assert len(muon) == (14 if optimizer == "muon" else 0)
    assert all(".layers." in n and n.endswith("proj.weight") for n in muon)
    adamw = next(o for o in opts if isinstance(o, torch.optim.AdamW))
    decayed = {by_name[id(p)] for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {n for n in by_name.values() if n.endswith("proj.weight") and optimizer == "adamw"} | {
        "model.embed_tokens.weight", "lm_head.weight"}


def test_the_optimizer_option_keeps_the_base_models_cache_key_of_an_adamw_world():
    world = SyntheticWorldConfig()
    adamw, muon = tiny_world_spec(PretrainConfig(), world), tiny_world_spec(PretrainConfig(optimizer="muon"), world)
    # The key of a model pretrained before the option existed: every other field, as before.
    assert adamw["pretrain"] == {k: v for k, v in asdict(PretrainConfig()).items() if k != "optimizer"}
    assert muon["pretrain"]["optimizer"] == "muon"
