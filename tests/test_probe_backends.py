"""The probe's sampling backends: vLLM only produces the texts; hits, rates and levels are the hf path's.

The vLLM API is faked here (a `vllm` module with LLM and SamplingParams of the real signatures, returning
scripted texts), so the level rules are checked on any machine; the real engine runs only on a GPU node.
"""
import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch

from sft_knowledge import probe as probe_module
from sft_knowledge.config import ConfigError, validate
from sft_knowledge.data.facts import Fact, KnowledgeBase, Relation
from sft_knowledge.config import ProbeConfig
from sft_knowledge.probe import probe

BOS = 1
TEMPLATES = ("{subject} was born in", "The birthplace of {subject} is")
# subject, object, which of the 4 samples of each template hit; then R and the level by hand (D-1 is (0, .25], ...).
TRAIN = [
    ("Ann", "Paris", "0000", "0000"),  # 0/8   R 0      D-0
    ("Bob", "Rome", "1000", "0000"),  # 1/8   R .125   D-1
    ("Cid", "Oslo", "1100", "0000"),  # 2/8   R .25    D-1 (upper bound included)
    ("Dan", "Lima", "1111", "0000"),  # 4/8   R .5     D-2
    ("Eve", "Kyiv", "1111", "1100"),  # 6/8   R .75    D-3
    ("Fay", "Baku", "1111", "1110"),  # 7/8   R .875   D-4
]
TEST = [("Gus", "Bern", "1111", "1111")]  # 8/8 R 1 D-4, every hit through the alias "Berne"
EXPECTED = {"train": ([0, 0.125, 0.25, 0.5, 0.75, 0.875], [0, 1, 1, 2, 3, 4]), "test": ([1.0], [4]), "testood": ([], [])}
ALIASES = {"Bern": ["Berne"]}


def _kb() -> KnowledgeBase:
    rel = Relation("P19", "Where was [X] born?", TEMPLATES, True)
    facts = lambda rows: [Fact(s, "P19", o, rel.question(s)) for s, o, *_ in rows]  # noqa: E731
    return KnowledgeBase({"P19": rel}, {"train": facts(TRAIN), "test": facts(TEST), "testood": []}, ALIASES)


def _script() -> dict[str, list[str]]:
    """prompt -> its 4 continuations: a hit names the answer (or its alias), a miss does not."""
    out = {}
    for subject, obj, *patterns in TRAIN + TEST:
        said = ALIASES.get(obj, [obj])[0]
        for template, pattern in zip(TEMPLATES, patterns):
            out[template.format(subject=subject)] = [f" {said}, in 1901." if c == "1" else " a small town." for c in pattern]
    return out


class CharTokenizer:
    """Enough of a tokenizer for encode_prompts: one id per character, and a BOS."""

    bos_token_id = BOS

    def __call__(self, texts, add_special_tokens=True):
        assert not add_special_tokens
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


MODEL = types.SimpleNamespace(name_or_path="/cache/base_model/abc", dtype=torch.bfloat16)  # all vLLM reads of it


def fake_vllm(script: dict[str, list[str]]) -> types.ModuleType:
    """A `vllm` module: LLM(model, *, dtype, seed, ...).generate(prompts, sampling_params, *, use_tqdm) -> RequestOutputs."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # what find_spec sees of an installed package
    module.engines, module.params = [], []

    class SamplingParams:
        def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, **kwargs):
            self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed
            module.params.append(self)

    class LLM:
        def __init__(self, model, *, dtype="auto", seed=None, gpu_memory_utilization=0.9, **kwargs):
            self.model, self.dtype, self.seed, self.share = model, dtype, seed, gpu_memory_utilization
            module.engines.append(self)

        def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
            assert len(sampling_params) == len(prompts)
            outputs = []
            for prompt, params in zip(prompts, sampling_params):
                ids = prompt["prompt_token_ids"]
                assert ids[0] == BOS and params.temperature == 0.7 and params.max_tokens == 32
                texts = script["".join(map(chr, ids[1:]))][: params.n]
                completions = [types.SimpleNamespace(index=j, text=t, token_ids=[]) for j, t in enumerate(texts)]
                outputs.append(types.SimpleNamespace(prompt=None, prompt_token_ids=ids, outputs=completions, finished=True))
            seeds = [p.seed + j for p in sampling_params for j in range(p.n)]  # what vLLM seeds each sample with
            assert len(set(seeds)) == len(seeds), "two samples would share a random stream"
            return outputs

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_vllm_and_hf_backends_give_the_hand_computed_levels_from_the_same_texts(monkeypatch):
    script = _script()
    cfg = ProbeConfig(n_map=2, n_sample=4, seed=3)

    def fake_generate(model, tokenizer, prompts, max_new_tokens, temperature, batch_size, seed, desc, n_samples, top_p):
        assert n_samples == 4 and seed == 3 and top_p == 1.0
        return [t for p in prompts for t in script[p]]

    monkeypatch.setattr(probe_module, "generate", fake_generate)
    hf = probe(MODEL, CharTokenizer(), _kb(), cfg)
    vllm = fake_vllm(script)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    vl = probe(MODEL, CharTokenizer(), _kb(), ProbeConfig(n_map=2, n_sample=4, seed=3, backend="vllm"))
    for result in (hf, vl):
        assert {split: (result.rate[split], result.level[split]) for split in EXPECTED} == EXPECTED
        assert result.template_rate["P19"] == pytest.approx([(0 + 1 + 2 + 4 + 4 + 4 + 4) / 4 / 7, (2 + 3 + 4) / 4 / 7])
    [engine] = vllm.engines  # one engine for every split, on the base model's weights and dtype
    assert (engine.model, engine.dtype, engine.seed) == ("/cache/base_model/abc", "bfloat16", 3)


def test_vllm_backend_is_a_config_choice_validated_before_any_stage(compose, monkeypatch):
    cfg = compose("probe.backend=vllm")
    assert cfg.probe.backend == "vllm" and compose().probe.backend == "hf"
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: find_spec answers None, import fails
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == "probe.backend=vllm needs the vllm package: `pip install vllm` on a GPU node, or use probe.backend=hf"
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm({}))
    validate(cfg)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_the_run_stops_in_one_line_and_writes_no_result(cli, tmp_path):
    proc = cli("probe.backend=vllm", output_dir=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: probe.backend=vllm needs the vllm package: "
                                                    "`pip install vllm` on a GPU node, or use probe.backend=hf")
    assert not list(tmp_path.rglob("results.json")) and not (tmp_path / "cache").exists()


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="the real vLLM engine needs a CUDA GPU and `pip install vllm`")
def test_real_vllm_samples_what_the_hf_path_samples(tmp_path):
    from sft_knowledge.cache import Cache
    from sft_knowledge.config import ModelError
    from sft_knowledge.models import build_smollm2, load

    try:
        path, _ = build_smollm2(Cache(tmp_path))
    except ModelError as err:
        pytest.skip(str(err))
    model, tokenizer = load(path, "bfloat16")
    rel = Relation("P36", "What is the capital of [X]?", ("The capital of {subject} is", "{subject}'s capital city is"), True)
    rows = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Zorblandia", "Quixville"), ("Vexmoor", "Plimtarn")]
    facts = [Fact(s, "P36", o, rel.question(s)) for s, o in rows]
    kb = KnowledgeBase({"P36": rel}, {"train": facts, "test": [], "testood": []})
    cfg = dict(n_map=2, n_sample=20, max_new_tokens=12)
    hf = probe(model, tokenizer, kb, ProbeConfig(**cfg))
    vl = probe(model, tokenizer, kb, ProbeConfig(**cfg, backend="vllm"))
    gap = sum(abs(a - b) for a, b in zip(hf.rate["train"], vl.rate["train"])) / len(rows)
    print(f"\nR per fact, hf {hf.rate['train']} vs vllm {vl.rate['train']}: mean gap {gap:.3f}")
    assert vl.level["train"][3:] == [0, 0] and gap < 0.15  # invented facts stay D-0; 40 samples per fact: sd of a gap ~0.1


# Hits of each of the 21 templates (10 samples each), 105 of 210 in all: exactly half, so D-2. A float32 mean of the
# per-template means put each of these above 0.5 (0.50000006 or 0.50000012 on the machine that found them in random
# arrangements), in D-3; integer hit counts cannot.
HALF_OF_210 = [
    [5, 6, 5, 4, 4, 5, 8, 5, 7, 4, 3, 5, 2, 6, 6, 6, 5, 5, 3, 7, 4],
    [6, 5, 6, 4, 5, 4, 6, 4, 7, 3, 4, 5, 6, 4, 5, 7, 7, 4, 4, 5, 4],
    [3, 5, 5, 6, 6, 6, 3, 5, 5, 6, 6, 8, 4, 5, 2, 6, 5, 5, 3, 5, 6],
    [6, 3, 4, 4, 6, 3, 5, 4, 5, 5, 6, 5, 6, 7, 8, 4, 7, 2, 4, 6, 5],
]


def _spread(hits: int, n_map: int, n_sample: int) -> list[int]:
    """`hits` spread over the templates as evenly as they go (the first templates get one more)."""
    return [hits // n_map + (j < hits % n_map) for j in range(n_map)]


def _probe_counts(monkeypatch, per_fact: list[list[int]], n_sample: int):
    """The sampling probe on one train fact per row of `per_fact` (hits of each template out of n_sample), scripted."""
    n_map = len(per_fact[0])
    templates = tuple(f"{{subject}} template {j} says" for j in range(n_map))
    rel = Relation("P19", "Where was [X] born?", templates, True)
    facts = [Fact(f"S{i}", "P19", "Paris", rel.question(f"S{i}")) for i in range(len(per_fact))]
    script = {t.format(subject=f.subject): [" Paris" if s < k else " Rome" for s in range(n_sample)]
              for f, counts in zip(facts, per_fact) for t, k in zip(templates, counts)}
    monkeypatch.setattr(probe_module, "generate", lambda model, tok, prompts, *args: [t for p in prompts for t in script[p]])
    kb = KnowledgeBase({"P19": rel}, {"train": facts, "test": [], "testood": []})
    return probe(MODEL, CharTokenizer(), kb, ProbeConfig(n_map=n_map, n_sample=n_sample))


def test_exactly_half_the_hits_is_d2_however_they_fall_over_templates(monkeypatch):
    result = _probe_counts(monkeypatch, HALF_OF_210 + [_spread(105, 21, 10)], n_sample=10)
    assert result.level["train"] == [2] * 5 and result.rate["train"] == [0.5] * 5


@pytest.mark.parametrize("n_map, n_sample, hits_and_levels", [
    # 210 samples: 25% is 52.5 hits, 50% 105, 75% 157.5
    (21, 10, [(0, 0), (1, 1), (52, 1), (53, 2), (105, 2), (106, 3), (157, 3), (158, 4), (209, 4), (210, 4)]),
    # 16 samples: 25% is 4 hits, 50% 8, 75% 12
    (4, 4, [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (12, 3), (13, 4), (16, 4)]),
])
def test_levels_at_the_quarter_boundaries_through_the_probe(monkeypatch, n_map, n_sample, hits_and_levels):
    result = _probe_counts(monkeypatch, [_spread(h, n_map, n_sample) for h, _ in hits_and_levels], n_sample)
    assert result.level["train"] == [lv for _, lv in hits_and_levels]
    assert result.rate["train"] == [h / (n_map * n_sample) for h, _ in hits_and_levels]
    # the per-template rates average to R
    assert result.template_rate["P19"] == pytest.approx(
        [sum(_spread(h, n_map, n_sample)[j] for h, _ in hits_and_levels) / n_sample / len(hits_and_levels) for j in range(n_map)])


def test_top_p_reaches_both_samplers(monkeypatch):
    seen = []
    monkeypatch.setattr(probe_module, "generate", lambda *args: seen.append(args[-1]) or [t for p in args[2] for t in _script()[p]])
    probe(MODEL, CharTokenizer(), _kb(), ProbeConfig(n_map=2, n_sample=4, top_p=0.9))
    assert seen == [0.9, 0.9]  # generate's top_p, for train and test
    vllm = fake_vllm(_script())
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    probe(MODEL, CharTokenizer(), _kb(), ProbeConfig(n_map=2, n_sample=4, top_p=0.9, backend="vllm"))
    assert {p.top_p for p in vllm.params} == {0.9} and len(vllm.params) == 14  # every request: 7 facts x 2 templates


def test_paper_only_probes_fewer_templates_and_grades_facts_out_of_their_own_budget(monkeypatch):
    """Relation A has 2 paper templates of 3, relation B all 3. A fact of A hit only by its new third template is D-2
    with every template (4 of 12 samples) and D-0 with the paper's (0 of 8); B's facts are graded the same both ways."""
    templates = tuple(f"{{subject}} template {j} says" for j in range(3))
    rels = {"A": Relation("A", "Q [X]?", templates, True, n_paper=2), "B": Relation("B", "Q [X]?", templates, True, n_paper=3)}
    rows = [("a1", "A", "0000", "0000", "1111"), ("a2", "A", "1100", "0000", "1111"), ("b1", "B", "1111", "1000", "0000")]
    facts = [Fact(subj, rel, "Paris", "Q?") for subj, rel, *_ in rows]
    script = {t.format(subject=subj): [" Paris" if c == "1" else " Rome" for c in pattern]
              for subj, _, *patterns in rows for t, pattern in zip(templates, patterns)}
    asked = []
    monkeypatch.setattr(probe_module, "generate", lambda model, tok, prompts, *args: asked.extend(prompts) or [t for p in prompts for t in script[p]])
    kb = KnowledgeBase(rels, {"train": facts, "test": [], "testood": []})
    every = probe(MODEL, CharTokenizer(), kb, ProbeConfig(n_map=3, n_sample=4))
    assert every.rate["train"] == [4 / 12, 6 / 12, 5 / 12] and every.level["train"] == [2, 2, 2] and len(asked) == 9
    asked.clear()
    paper = probe(MODEL, CharTokenizer(), kb, ProbeConfig(n_map=3, n_sample=4, templates="paper_only"))
    assert paper.rate["train"] == [0.0, 2 / 8, 5 / 12] and paper.level["train"] == [0, 1, 2]
    assert asked == [t.format(subject=s) for s, n in (("a1", 2), ("a2", 2), ("b1", 3)) for t in templates[:n]]
    assert paper.template_rate == {"A": [0.25, 0.0], "B": [1.0, 0.25, 0.0]} and paper.best_template("A") == 0
    assert probe_module.templates_used(kb, ProbeConfig(n_map=3, templates="paper_only")) == {"A": 2, "B": 3}
    assert probe_module.templates_used(kb, ProbeConfig(n_map=3)) == {"A": 3, "B": 3}
