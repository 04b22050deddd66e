"""Batched, left-padded decoding must give what one-prompt-at-a-time decoding gives."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft_knowledge.decoding import answer_logprob, encode_prompts, generate, next_token_logits, nucleus, qa_prompt, top_k_filter
from sft_knowledge.pretrain import train_tokenizer

DOCS = [f"The capital of Land{i} is City{i % 7}. Question: Where was Person{i} born? Answer: Town{i % 5}." for i in range(200)]


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tok = train_tokenizer(DOCS, 300)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    return model, tok


PROMPTS = ["The capital of Land3 is", "Question: Where was Person12 born? Answer:", "The", qa_prompt("Where was Person1 born?")]


def _reference_greedy(model, tok, prompt, n):
    ids = torch.tensor([encode_prompts(tok, [prompt])[0]])
    out = []
    for _ in range(n):
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
        out.append(nxt)
        if nxt == tok.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return tok.decode(out, skip_special_tokens=True)


def test_greedy_batched_equals_one_by_one(lm):
    model, tok = lm
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3)
    assert batched == [_reference_greedy(model, tok, p, 6) for p in PROMPTS]


def test_sampling_is_seeded_and_varies(lm):
    model, tok = lm
    a = generate(model, tok, PROMPTS * 8, 5, temperature=1.0, seed=1)
    assert a == generate(model, tok, PROMPTS * 8, 5, temperature=1.0, seed=1)
    assert a != generate(model, tok, PROMPTS * 8, 5, temperature=1.0, seed=2)


def test_next_token_logits_ignore_padding(lm):
    model, tok = lm
    batched = next_token_logits(model, tok, PROMPTS, batch_size=4)
    for i, p in enumerate(PROMPTS):
        single = model(input_ids=torch.tensor([encode_prompts(tok, [p])[0]])).logits[0, -1]
        torch.testing.assert_close(batched[i], single, atol=1e-4, rtol=1e-4)


def test_answer_logprob_matches_manual_teacher_forcing(lm):
    model, tok = lm
    temp = 0.7
    # Answers of different token lengths in one batch: each is summed over its own tokens only.
    answers = ["City3", "Town2 of the northern hills", "x"]
    got = answer_logprob(model, tok, PROMPTS[:3], answers, temperature=temp)
    n_answer = []
    for i, (prompt, answer) in enumerate(zip(PROMPTS[:3], answers)):
        # The answer's tokens are those that follow the prompt's in the whole text.
        n_prompt, full = len(encode_prompts(tok, [prompt])[0]), encode_prompts(tok, [f"{prompt} {answer}"])[0]
        n_answer.append(len(full) - n_prompt)
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0] / temp, -1)
        expected = sum(logp[j - 1, full[j]] for j in range(n_prompt, len(full)))
        torch.testing.assert_close(got[i], expected, atol=1e-4, rtol=1e-4)
    assert len(set(n_answer)) == 3 and min(n_answer) >= 1  # the batch really mixes answer lengths


def test_prompt_format_is_the_papers():
    assert qa_prompt("  Where was X born? ") == "<|question|> Where was X born? <|answer|>"


def test_shared_prompt_samples_are_prompt_major_and_greedy_identical(lm):
    model, tok = lm
    greedy = generate(model, tok, PROMPTS, 6, batch_size=8, n_samples=3)
    assert greedy == [g for g in generate(model, tok, PROMPTS, 6) for _ in range(3)]
    sampled = generate(model, tok, PROMPTS, 5, temperature=1.0, seed=0, n_samples=4)
    assert len(sampled) == 4 * len(PROMPTS) and len(set(sampled)) > len(PROMPTS)


def test_nucleus_keeps_the_smallest_most_likely_set_reaching_top_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    for top_p, kept in ((0.75, [0, 1, 0, 1]), (0.4, [0, 1, 0, 0]), (0.9, [0, 1, 1, 1])):  # 0.5 + 0.3 reach 0.75, ...
        assert torch.equal(nucleus(probs, top_p), probs * torch.tensor([kept])), top_p  # the kept ones unchanged
    gen = torch.Generator().manual_seed(0)
    drawn = torch.multinomial(nucleus(probs.expand(2000, 4), 0.75), 1, generator=gen).unique().tolist()
    assert drawn == [1, 3]  # never a token outside the nucleus


def test_top_p_changes_sampling_and_a_tiny_nucleus_is_greedy(lm):
    model, tok = lm
    prompts = PROMPTS * 8
    greedy = generate(model, tok, prompts, 5)
    plain = generate(model, tok, prompts, 5, temperature=1.0, seed=1)
    assert plain == generate(model, tok, prompts, 5, temperature=1.0, seed=1, top_p=1.0)  # 1.0 is plain sampling
    assert plain != greedy  # a random model's samples wander off the greedy path
    assert generate(model, tok, prompts, 5, temperature=1.0, seed=1, top_p=1e-6) == greedy  # only the top token is left


def test_top_k_keeps_the_k_most_likely_and_ties_with_the_kth():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25]])
    kept = top_k_filter(probs, 2)
    assert torch.equal(kept[0] > 0, torch.tensor([False, True, False, True]))
    torch.testing.assert_close(kept[0, [1, 3]], torch.tensor([0.5, 0.3]) / 0.8)  # renormalised over what is left
    torch.testing.assert_close(kept[1], probs[1])  # four tokens tied with the 2nd most likely all stay
    torch.testing.assert_close(top_k_filter(probs, 10), probs)  # k beyond the vocabulary keeps every token
    # Renormalised first, the nucleus is a share of the top k: 0.5 / 0.8 = 0.625 reaches 0.6 alone.
    assert torch.equal(nucleus(top_k_filter(probs[:1], 2), 0.6) > 0, torch.tensor([[False, True, False, False]]))


def test_top_k_changes_sampling_and_top_1_is_greedy(lm):
    model, tok = lm
    prompts = PROMPTS * 8
    greedy = generate(model, tok, prompts, 5)
    plain = generate(model, tok, prompts, 5, temperature=1.0, seed=1)
    assert generate(model, tok, prompts, 5, temperature=1.0, seed=1, top_k=1) == greedy
    assert generate(model, tok, prompts, 5, temperature=1.0, seed=1, top_k=0) == plain  # 0 is plain sampling
    assert generate(model, tok, prompts, 5, temperature=1.0, seed=1, top_k=3) != plain
