"""Probe decoding throughput: our batched sampler against Hugging Face `generate`, same prompts, same machine.

    python benchmarks/bench_decoding.py [--model DIR] [--prompts 256] [--samples 10]

Baseline: `model.generate(do_sample=True, temperature=0.7, num_return_sequences=n)` over the same
left-padded batches. Ours: `decoding.generate` (prompt KV cache shared by its samples, finished rows
dropped from the batch). Without --model it pretrains nothing and uses a random tiny_world-sized Llama.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft_knowledge.config import SyntheticWorldConfig
from sft_knowledge.data.synthetic import build_world
from sft_knowledge.decoding import _batches, _left_pad, encode_prompts, generate, pad_id
from sft_knowledge.models import load
from sft_knowledge.pretrain import train_tokenizer


def hf_generate(model, tokenizer, prompts, n, max_new_tokens, batch_size):
    encoded = encode_prompts(tokenizer, prompts)
    out = 0
    for idx in _batches([len(e) for e in encoded], max(1, batch_size // n)):
        ids, mask, _ = _left_pad(tokenizer, [encoded[i] for i in idx], model.device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_p=1.0, top_k=0,
                             num_return_sequences=n, max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer),
                             eos_token_id=tokenizer.eos_token_id)
        out += gen.shape[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a Hugging Face model dir (default: random tiny_world-sized Llama)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    world_cfg = SyntheticWorldConfig(n_train=args.prompts, n_test=10, n_testood=10, n_bridge_per_relation=1)
    world = build_world(world_cfg)
    facts = world.kb.splits["train"][: args.prompts]
    prompts = [world.kb.relations[f.relation].mapping_prompts(f.subject, 1)[0] for f in facts]
    if args.model:
        model, tokenizer = load(args.model)
    else:
        tokenizer = train_tokenizer(world.corpus(0, world_cfg), 2048)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=4, pad_token_id=tokenizer.pad_token_id,
                                             eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)).eval()
    n = args.prompts * args.samples
    timings = {}
    for name, fn in [
        ("hf_generate (baseline)", lambda: hf_generate(model, tokenizer, prompts, args.samples, args.max_new_tokens, args.batch_size)),
        ("sft_knowledge.generate", lambda: generate(model, tokenizer, prompts, args.max_new_tokens, 0.7, args.batch_size, 0, None, args.samples)),
    ]:
        fn()  # warm-up (first oneDNN calls are slow)
        start = time.time()
        with torch.no_grad():
            fn()
        timings[name] = time.time() - start
        print(f"{name:<24} {timings[name]:7.2f} s  {n / timings[name]:8.0f} continuations/s", flush=True)
    base, ours = timings.values()
    print(f"speed-up: {base / ours:.2f}x ({args.prompts} prompts x {args.samples} samples, up to {args.max_new_tokens} new tokens)")


if __name__ == "__main__":
    main()
