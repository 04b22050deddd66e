"""What the model reads and how it writes: the paper's prompt format and batched decoding.

Every stage that runs a model goes through here, so probe, SFT, evaluation and KL agree on
tokenisation. A prompt is `[bos] + encode(prompt)`: that is what generation and the KL condition on.
An example is the whole text `prompt + " " + answer` (for SFT followed by App. A's space before EOS),
tokenised in one piece and split where the prompt's own tokens end (`encode_examples`); the target is the rest,
then `[eos]`. So prompt + target
are exactly the tokens the model would read for the whole text (as in pretraining) and would have to
write after the prompt. Encoding `" " + answer` on its own is not: SentencePiece with a dummy prefix
(LLaMA-2; also its tokenizer.json or .model read by PreTrainedTokenizerFast, though transformers 5's
LlamaTokenizer skips the prefix before a space) makes it `"▁▁Paris"`, a lone `"▁"` first, which SFT
would teach. Stripping a lone space token instead would be wrong where the whole text
does have one: SmolLM2 and LLaMA-3 write `" 1879"` as `"Ġ"` then digits, LLaMA-2 as `"▁"` then digits.
A tokenizer whose prompt tokens are not a prefix of the whole text's (a merge across the prompt's end)
is refused: no split then gives both the prompt that generation sees and the tokens of the text.
Decoding is batched wide over length-sorted prompts, with the KV cache, and stops as soon as every
sequence of a batch has produced EOS.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from .errors import ModelError

QA_MARKERS = ("<|question|>", "<|answer|>")


def qa_prompt(question: str) -> str:
    """Paper App. A: `{bos}<|question|> {q} <|answer|>`; the answer follows as ` {a} {eos}`."""
    return f"{QA_MARKERS[0]} {question.strip()} {QA_MARKERS[1]}"


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def qa_text(prompt: str, answer: str) -> str:
    """The text of one example: the prompt, one space, the answer (paper App. A)."""
    return f"{prompt} {answer.strip()}"


def encode_examples(tokenizer, prompts: list[str], answers: list[str], eos: bool = True,
                    suffix: str = "") -> list[tuple[list[int], list[int]]]:
    """`(prompt_ids, target_ids)` of each `qa_text(prompt, answer) + suffix`: its tokens split where the prompt's end,
    `[eos]` appended to the target when `eos`. The one encoding of answers for every stage (module docstring); SFT
    passes App. A's `suffix=" "`, written as the whole text's trailing space token (`"▁"`, `"Ġ"`) before EOS."""
    texts = [qa_text(p, a) + suffix for p, a in zip(prompts, answers, strict=True)]
    tail = [tokenizer.eos_token_id] if eos else []
    examples = []
    for text, p, ids in zip(texts, encode_prompts(tokenizer, prompts), encode_prompts(tokenizer, texts)):
        if ids[: len(p)] != p or len(ids) == len(p):

            raise ModelError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} does not end the prompt's tokens where "
                             f"the answer begins in {text!r}: the prompt format needs a token boundary before the answer")
        examples.append((p, ids[len(p) :] + tail))
    return examples


def first_target_tokens(tokenizer, prompts: list[str], answers: list[str]) -> list[int]:
    """The first answer token of each example, as SFT teaches it (for filters on the model's first token)."""
    return [t[0] for _, t in encode_examples(tokenizer, prompts, answers, eos=False)]


def _batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices sorted by length, cut into batches, so that padding stays small."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def pad_id(tokenizer) -> int:
    """The id that fills padding: the tokenizer's pad token (0 included), else its EOS (LLaMA defines no pad token),
    else 0. The attention mask hides padding, so which id it is changes no logit; it only has to be a real one."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def _left_pad(tokenizer, seqs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and position ids of `seqs` left-padded to one width, on `device`. Positions count
    from each sequence's first real token, so a padded prompt is read exactly as it would be alone."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s)
        mask[row, width - len(s) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p filtering (Holtzman et al., 2020): zero every token outside the smallest most-likely-first set whose
    probability reaches top_p. The most likely token always stays; what is left needs no renormalising for multinomial."""
    ranked, order = probs.sort(-1, descending=True)
    outside = ranked.cumsum(-1) - ranked >= top_p  # the tokens before it already reach top_p
    return probs.scatter(-1, order, ranked.masked_fill(outside, 0.0))


def top_k_filter(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Top-k filtering (Fan et al., 2018): zero every token less likely than the k-th most likely (ties with it stay, as
    in Hugging Face's TopKLogitsWarper), renormalised so that a nucleus taken after it is a share of what is left."""
    kth = probs.topk(min(top_k, probs.size(-1)), dim=-1).values[..., -1:]
    kept = probs.masked_fill(probs < kth, 0.0)
    return kept / kept.sum(-1, keepdim=True)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    desc: str | None = None,
    n_samples: int = 1,
    top_p: float = 1.0,
    top_k: int = 0,
) -> list[str]:
    """Continue each prompt `n_samples` times (output is prompt-major: all samples of prompt 0 first).

    Greedy when temperature == 0, else sampling: from the top_k most likely tokens when top_k > 0 (SliCK's top-k 40),
    then from the top-p nucleus when top_p < 1. The prompt is encoded once and its KV cache shared by its samples;
    finished sequences leave the batch at once.
    """
    model.eval()
    device = _device(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    encoded = encode_prompts(tokenizer, prompts)
    outputs: list[str] = [""] * (len(prompts) * n_samples)
    batches = list(_batches([len(e) for e in encoded], max(1, batch_size // n_samples)))
    for idx in tqdm(batches, desc=desc, disable=desc is None, mininterval=5):
        ids, mask, pos = _left_pad(tokenizer, [encoded[i] for i in idx], device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1, :].float()
        if n_samples > 1:
            cache.batch_repeat_interleave(n_samples)
            logits, mask, pos = (t.repeat_interleave(n_samples, dim=0) for t in (logits, mask, pos))
        rows = torch.tensor([i * n_samples + j for i in idx for j in range(n_samples)])  # output slot of each live row
        tokens: list[list[int]] = [[] for _ in rows]
        live = list(range(len(rows)))  # position in `tokens` of each live row
        for _ in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(logits / temperature, -1)
                if top_k > 0:
                    probs = top_k_filter(probs, top_k)
                if top_p < 1:
                    probs = nucleus(probs, top_p)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            else:
                nxt = logits.argmax(-1)
            for row, token in zip(live, nxt.tolist()):
                tokens[row].append(token)
            going = (nxt != tokenizer.eos_token_id).nonzero().squeeze(1)
            if len(going) == 0:
                break
            if len(going) < len(live):  # drop finished rows from the batch and the cache
                cache.batch_select_indices(going)
                nxt, mask, pos = nxt[going], mask[going], pos[going]
                live = [live[i] for i in going.tolist()]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1, :].float()
        for slot, text in zip(rows.tolist(), tokenizer.batch_decode(tokens, skip_special_tokens=True)):
            outputs[slot] = text
    return outputs


@torch.no_grad()
def next_token_logits(model, tokenizer, prompts: list[str], batch_size: int = 256,
                      after: list[list[int]] | None = None) -> torch.Tensor:
    """Logits of the first token after each prompt, or after the prompt and then the token ids `after[i]` (what a
    model already wrote), [n, vocab] float32 on the CPU."""
    model.eval()
    device = _device(model)
    encoded = encode_prompts(tokenizer, prompts)
    if after is not None:
        encoded = [ids + more for ids, more in zip(encoded, after, strict=True)]
    result = torch.empty((len(prompts), model.config.vocab_size))
    for idx in _batches([len(e) for e in encoded], batch_size):
        ids, mask, pos = _left_pad(tokenizer, [encoded[i] for i in idx], device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        result[idx] = logits.float().cpu()
    return result


@torch.no_grad()
def answer_logprob(
    model, tokenizer, prompts: list[str], answers: list[str], temperature: float = 1.0, batch_size: int = 256
) -> torch.Tensor:
    """log P(answer | prompt) under softmax(logits / temperature), by teacher forcing, the answer's tokens those of
    `encode_examples`: [n] float32."""
    model.eval()
    device = _device(model)
    examples = encode_examples(tokenizer, prompts, answers, eos=False)
    seqs = [p + a for p, a in examples]
    n_answer = [len(a) for _, a in examples]
    result = torch.empty(len(prompts))
    for idx in _batches([len(s) for s in seqs], batch_size):
        ids, mask, pos = _left_pad(tokenizer, [seqs[i] for i in idx], device)
        # Left padding puts every answer in the last `keep` positions: logits of the prompt are never computed
        # (the output layer and softmax over the vocabulary are most of a small model's probe time).
        keep = max(n_answer[i] for i in idx)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep + 1).logits[:, :-1]
        logp = torch.log_softmax(logits.float() / temperature, -1)
        token_logp = logp.gather(-1, ids[:, -keep:].unsqueeze(-1)).squeeze(-1)  # log p of each next token
        is_answer = torch.arange(keep, device=device) >= keep - torch.tensor([n_answer[i] for i in idx], device=device)[:, None]
        result[idx] = token_logp.where(is_answer, 0.0).sum(-1).cpu()  # where, not *: a -inf prompt token stays out
    return result
