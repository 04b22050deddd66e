import math
import re
from types import SimpleNamespace

import pytest
import torch

from sft_knowledge import kl as kl_module
from sft_knowledge.config import Config
from sft_knowledge.data.facts import Fact, KnowledgeBase, Relation
from sft_knowledge.probe import ProbeResult
from sft_knowledge.recipe import BaseModel, kl_reference
from sft_knowledge.kl import answer_start, early_answers, kl_stats, missing_reason, topk_renormalised_kl
from sft_knowledge.pretrain import train_tokenizer


def test_hand_computed_example():
    # vocab 3, k=2. ft logits [2, 1, 0]: top-2 ids are 0, 1, so p = softmax([2, 1]) = [e, 1] / (e + 1).
    # base logits at those ids are [0, 1]: q = softmax([0, 1]) = [1, e] / (e + 1).
    # KL = p0 ln(p0/q0) + p1 ln(p1/q1) = e/(e+1) * 1 + 1/(e+1) * (-1) = (e - 1)/(e + 1) = tanh(1/2) = 0.4621171573
    ft = torch.tensor([[2.0, 1.0, 0.0]])
    base = torch.tensor([[0.0, 1.0, 5.0]])
    assert topk_renormalised_kl(ft, base, k=2).item() == pytest.approx(0.4621171573, abs=1e-6)
    assert math.tanh(0.5) == pytest.approx(0.4621171573, abs=1e-9)


def test_identical_logits_give_zero():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(topk_renormalised_kl(logits, logits.clone()), torch.zeros(5))


def test_invariant_to_a_constant_shift_of_base_logits():
    g = torch.Generator().manual_seed(1)
    ft, base = torch.randn(6, 30, generator=g), torch.randn(6, 30, generator=g)
    shift = torch.randn(6, 1, generator=g) * 10
    torch.testing.assert_close(topk_renormalised_kl(ft, base + shift, k=5), topk_renormalised_kl(ft, base, k=5))


def test_only_the_fine_tuned_top_k_ids_matter():
    g = torch.Generator().manual_seed(2)
    ft, base = torch.randn(4, 30, generator=g), torch.randn(4, 30, generator=g)
    outside = ft.topk(30, dim=-1).indices[:, 5:]  # ids outside ft's top-5
    changed = base.scatter(1, outside, 100.0)
    torch.testing.assert_close(topk_renormalised_kl(ft, changed, k=5), topk_renormalised_kl(ft, base, k=5))
    inside = ft.topk(1, dim=-1).indices
    assert (topk_renormalised_kl(ft, base.scatter(1, inside, 100.0), k=5) != topk_renormalised_kl(ft, base, k=5)).all()


def test_non_negative_and_shape_on_random_inputs():
    g = torch.Generator().manual_seed(3)
    ft, base = torch.randn(200, 100, generator=g) * 3, torch.randn(200, 100, generator=g) * 3
    kl = topk_renormalised_kl(ft.bfloat16(), base.bfloat16())
    assert kl.shape == (200,) and kl.dtype == torch.float32 and (kl >= 0).all() and (kl > 0).any()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="vocab"):
        topk_renormalised_kl(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="k=6"):
        topk_renormalised_kl(torch.zeros(2, 5), torch.zeros(2, 5), k=6)


def test_kl_stats_known_values():
    stats = kl_stats(torch.arange(11, dtype=torch.float32))  # 0, 1, ..., 10
    assert (stats.mean, stats.median, stats.max, stats.n) == (5.0, 5.0, 10.0, 11)
    assert stats.p90 == pytest.approx(9.0)
    assert len(stats.histogram) == 20 and sum(stats.histogram) == 11
    assert stats.bin_edges[0] == 0.0 and stats.bin_edges[-1] == 10.0 and len(stats.bin_edges) == 21
    # Bins are 0.5 wide: value i lands in bin 2i, and 10 in the last bin, which is closed on the right.
    assert stats.histogram == [1, 0] * 9 + [1, 1]


def test_kl_stats_empty_and_all_zero():
    assert kl_stats(torch.zeros(0)) is None
    stats = kl_stats(torch.zeros(4))
    assert stats.max == 0.0 and stats.histogram[0] == 4 and sum(stats.histogram) == 4


# The answer-position filter (paper §4.1: "answers appear near the beginning of the generated text").


class WordTokenizer:
    """GPT-2-like pieces: a word with its leading space, or a run of punctuation; decode joins them back."""

    bos_token_id = pad_token_id = eos_token_id = None

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.vocab[piece]

    def __call__(self, texts, add_special_tokens=True):
        assert not add_special_tokens
        return {"input_ids": [[self._id(p) for p in re.findall(r" ?\w+| ?[^\w\s]+|\s+", t)] for t in texts]}

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def _ids(tok, text):
    return tok([text], add_special_tokens=False)["input_ids"][0]


def test_answer_start_is_the_token_where_the_answer_begins():
    tok = WordTokenizer()
    assert answer_start(tok, _ids(tok, " Paris, France"), ["Paris"]) == 0
    assert answer_start(tok, _ids(tok, " the city of Paris"), ["Paris"]) == 3
    assert answer_start(tok, _ids(tok, " in New York City."), ["New York City"]) == 1  # a three-token answer
    assert answer_start(tok, _ids(tok, " a small town"), ["Paris"]) is None
    # the earliest of the answer and its aliases; matching is is_correct's (case, punctuation)
    assert answer_start(tok, _ids(tok, " the NYC area, New York City"), ["New York City", "NYC"]) == 1
    assert answer_start(tok, _ids(tok, " PARIS!"), ["Paris"]) == 0
    assert answer_start(tok, _ids(tok, " (paris)"), ["Paris"]) == 1  # the bracket is a token of its own
    # an answer inside a longer word begins at that word's token, as the substring rule counts it
    assert answer_start(tok, _ids(tok, " big Parisian"), ["Paris"]) == 1


def test_answer_start_with_a_real_bpe_tokenizer():
    tok = train_tokenizer([f"Person{i} was born in Town{i % 5} near the old river." for i in range(100)], 300)
    for prefix in ["", " near the", " near the old river. Person3 was born in"]:
        ids = _ids(tok, f"{prefix} Town3 near")
        assert answer_start(tok, ids, ["Town3"]) == len(_ids(tok, prefix))


N = 3
# base prompt -> the base model's scripted greedy completion; the answer begins at token 0, N-1, N or never.
COMPLETIONS = {
    "a": " Paris, in France",  # token 0: kept
    "b": " the city Paris",  # token 2 = N-1: kept
    "c": " the old city Paris",  # token 3 = N: dropped
    "d": " a small town",  # never: dropped
    "e": " of the Berne canton",  # alias, token 2: kept
    "f": " in the old city of Bern",  # too late even for the gold answer: dropped
}
ANSWERS = {"a": ["Paris"], "b": ["Paris"], "c": ["Paris"], "d": ["Paris"], "e": ["Bern", "Berne"], "f": ["Bern", "Berne"]}


def _scripted(monkeypatch, calls):
    def fake_generate(model, tokenizer, prompts, max_new_tokens, temperature, batch_size):
        calls.append((prompts, max_new_tokens, temperature))
        return [COMPLETIONS[p] for p in prompts]
    monkeypatch.setattr(kl_module, "generate", fake_generate)


def test_early_answers_keeps_answers_starting_before_token_n(monkeypatch):
    calls = []
    _scripted(monkeypatch, calls)
    prompts = list(COMPLETIONS)
    kept = early_answers(None, WordTokenizer(), prompts, [ANSWERS[p] for p in prompts], N)
    assert kept.kept == [0, 1, 4] and (kept.n_candidates, kept.n_kept) == (6, 3)
    assert kept.kept_by_start == [1, 0, 2]  # "a" at token 0; "b" and "e" at token 2
    assert kept.record() == {"answer_within_tokens": 3, "n_candidates": 6, "n_kept": 3, "kept_by_start": [1, 0, 2]}
    # greedy, for N tokens plus the longest answer's (every answer here is one word piece)
    [(seen, max_new, temperature)] = calls
    assert seen == prompts and max_new == N + 1 and temperature == 0.0
    # one token more lets "c" in; one less drops "b" and "e"
    assert early_answers(None, WordTokenizer(), prompts, [ANSWERS[p] for p in prompts], N + 1).kept == [0, 1, 2, 4]
    assert early_answers(None, WordTokenizer(), prompts, [ANSWERS[p] for p in prompts], N - 1).kept == [0]


def test_no_filter_keeps_every_fact_without_generating(monkeypatch):
    calls = []
    _scripted(monkeypatch, calls)
    kept = early_answers(None, WordTokenizer(), list("abcd"), [["Paris"]] * 4, None)
    assert kept.kept == [0, 1, 2, 3] and kept.record() == {"answer_within_tokens": None, "n_candidates": 4, "n_kept": 4, "kept_by_start": None}
    assert calls == []


def test_missing_kl_says_why(monkeypatch):
    _scripted(monkeypatch, [])
    empty = early_answers(None, WordTokenizer(), [], [], N)
    assert (empty.n_candidates, empty.n_kept) == (0, 0)
    assert missing_reason(4, empty) == "D_test-4 holds no facts"
    none_kept = early_answers(None, WordTokenizer(), ["c", "d"], [["Paris"], ["Paris"]], N)
    assert none_kept.kept == [] and missing_reason(4, none_kept) == (
        "none of the 2 D_test-4 facts has its answer within the base model's first 3 generated tokens (kl.answer_within_tokens)")


# Where the base model is read (kl.position): a scripted base model that writes " the city" before the answer.


class LastTokenModel(torch.nn.Module):
    """A causal LM whose next-token logits depend only on the token just read: `table[token]`, else zeros."""

    def __init__(self, vocab_size: int, table: dict[int, torch.Tensor]):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # where the model lives
        self.table = table

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        for token, row in self.table.items():
            logits[input_ids == token] = row
        return SimpleNamespace(logits=logits)


def _kl_reference(monkeypatch, position: str, subjects: list[str]):
    """The KL reference of D_test-4 facts "<subject> lives in"; the base model's greedy completions are scripted:
    Ann's answer comes after " the city", Bob's at once. Returns the reference and the fine-tuned model."""
    completions = {"Ann lives in": " the city Paris", "Bob lives in": " Rome, Italy"}
    monkeypatch.setattr(kl_module, "generate", lambda model, tok, prompts, *a: [completions[p] for p in prompts])
    tok = WordTokenizer()
    ids = dict(zip([" Paris", " the", " in", " city", "|>"], _ids(tok, " Paris the in city|>")))
    answer, filler = torch.zeros(16), torch.zeros(16)
    answer[ids[" Paris"]], answer[ids[" the"]] = 2.0, 1.0  # where an answer begins: " Paris" first
    filler[ids[" the"]] = 1.0  # after "lives in": " the" first
    # the base model predicts the filler after its prompt and the answer after its own " the city"; the fine-tuned
    # model, asked the question, predicts the answer after the prompt's last token, "|>" of "<|answer|>"
    base = BaseModel("scripted", {}, LastTokenModel(16, {ids[" in"]: filler, ids[" city"]: answer}), tok, True)
    tuned = LastTokenModel(16, {ids["|>"]: answer})
    relation = Relation("P1", "Where does [X] live?", ("{subject} lives in",), True)
    facts = [Fact(s, "P1", {"Ann": "Paris", "Bob": "Rome"}[s], f"Where does {s} live?") for s in subjects]
    kb = KnowledgeBase({"P1": relation}, {"test": facts})
    levels = ProbeResult(rate={"test": [1.0] * len(facts)}, level={"test": [4] * len(facts)}, template_rate={"P1": [1.0]})
    cfg = Config()
    cfg.kl.top_k, cfg.kl.position = 2, position
    return kl_reference(cfg, kb, levels, base), tuned, tok, ids


def test_the_base_model_is_read_where_the_answer_begins(monkeypatch):
    # top-2 of the fine-tuned model: " Paris" (logit 2) and " the" (1). At the answer's first token the base model's
    # logits there are the same, KL 0; at its first generated token they are 0 and 1: KL = tanh(1/2) (see above).
    ref, tuned, tok, ids = _kl_reference(monkeypatch, "answer_start", ["Ann", "Bob"])
    assert ref.base_before == [[ids[" the"], ids[" city"]], []]
    assert ref.kl(tuned, tok).tolist() == pytest.approx([0.0, math.tanh(0.5)], abs=1e-6)
    first, *_ = _kl_reference(monkeypatch, "first_token", ["Ann", "Bob"])
    assert first.base_before == [[], []]
    assert first.kl(tuned, tok).tolist() == pytest.approx([math.tanh(0.5), math.tanh(0.5)], abs=1e-6)
    # SFT's key (the KL curve's inputs) changes only where the two positions read different tokens
    assert ref.spec() != first.spec()
    at_once, *_ = _kl_reference(monkeypatch, "answer_start", ["Bob"])
    assert at_once.spec() == _kl_reference(monkeypatch, "first_token", ["Bob"])[0].spec()
