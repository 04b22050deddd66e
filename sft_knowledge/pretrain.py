"""Pretrain the embedded `tiny_world` model: a BPE tokenizer and a small Llama, from scratch, on the CPU.

This stage stands in for the pretraining a real base model had. Its output is a standard Hugging
Face directory (config, safetensors, tokenizer) that `models.load` loads like any other model.
"""
from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .config import PretrainConfig
from .decoding import QA_MARKERS
from .train import cosine_lr

# One separator token ends a document and begins the next (GPT-2 style), so it also serves as BOS.
EOS, PAD = "</s>", "<pad>"
# Pretraining throughput per CPU thread, for the time estimate printed before it starts, in parameters x tokens per
# second: the step is matrix products (about 6 x parameters FLOPs per token), so a smaller model runs faster in
# proportion. Measured 1.8-2.2e10 on the project's 2 idle cores for models of 0.9M to 1.6M parameters (AMD EPYC VM and
# Intel Xeon VM, 2026-12-02 and 2026-12-05).
PARAM_TOKENS_PER_S_PER_THREAD = 1.0e10


def estimated_minutes(params: int, n_tokens: int, threads: int) -> float:
    """Rough pretraining time on `threads` CPU threads, for the line printed before it starts."""
    return params * n_tokens / (PARAM_TOKENS_PER_S_PER_THREAD * threads) / 60


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(docs, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, padding_side="left")
    # The SFT prompt markers are plain (non-special) tokens the corpus never shows, as in a real model.
    fast.add_tokens(list(QA_MARKERS))
    return fast


def _pack(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    sep = tokenizer.eos_token_id
    encs = tokenizer.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False)
    ids = list(itertools.chain.from_iterable([sep, *e.ids] for e in encs))
    n_rows = len(ids) // seq_len
    return torch.tensor(ids[: n_rows * seq_len]).view(n_rows, seq_len)


def optimizers(model, cfg: PretrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW (the default), or Muon for the decoder layers' matrices and AdamW for the rest (embeddings, head and norms,
    which Muon's orthogonalised steps do not suit). Muon masters the world's facts from fewer exposures (Wang et al.
    2025, "Muon Outperforms Adam in Tail-End Associative Memory Learning"), but SFT drew less of them out (docs/world.md)."""
    muon = [p for n, p in model.named_parameters() if p.ndim == 2 and ".layers." in n] if cfg.optimizer == "muon" else []
    taken = {id(p) for p in muon}
    decay = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in taken]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opts = [torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )]
    if muon:  # Moonshot's lr scaling gives Muon's steps AdamW's RMS, so both take cfg.lr
        opts.append(torch.optim.Muon(muon, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"))
    return opts


def pretrain(docs: list[str], cfg: PretrainConfig, out_dir: Path) -> dict:
    """Train tokenizer and model on `docs`; save both to `out_dir`; return training stats."""
    torch.manual_seed(cfg.seed)
    start = time.time()
    tokenizer = train_tokenizer(docs, cfg.vocab_size)
    rows = _pack(tokenizer, docs, cfg.seq_len)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=max(256, cfg.seq_len),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    )
    opts = optimizers(model, cfg)
    steps = max(1, int(cfg.epochs * len(rows) / cfg.batch_size))
    n_tokens = steps * cfg.batch_size * cfg.seq_len
    params = sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()
    print(f"pretraining tiny_world once (then cached): {n_tokens / 1e6:.1f}M tokens, {params / 1e6:.1f}M parameters, "
          f"{cfg.epochs:g} epoch(s); about {estimated_minutes(params, n_tokens, threads):.0f} min on {threads} CPU thread(s)", flush=True)
    order = random.Random(cfg.seed)
    perm: list[int] = []
    model.train()
    losses = []
    for step in tqdm(range(steps), desc="pretrain tiny_world", mininterval=5):
        if len(perm) < cfg.batch_size:  # reshuffle the packed rows each epoch
            fresh = list(range(len(rows)))
            order.shuffle(fresh)
            perm += fresh
        batch = rows[perm[: cfg.batch_size]]
        del perm[: cfg.batch_size]
        lr = cosine_lr(step, steps, cfg.lr, cfg.warmup_steps, ramp_over_decay=True)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    seconds = time.time() - start
    return {
        "params": params,
        "tokens": n_tokens,
        "corpus_tokens": rows.numel(),
        "steps": steps,
        "seconds": seconds,
        "tokens_per_s": n_tokens / seconds,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
    }
