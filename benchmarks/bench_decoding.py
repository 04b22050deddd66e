"""Probe benchmark: the probe's decoding against Hugging Face `generate`, and the likelihood estimator against sampling.

    python benchmarks/bench_decoding.py [--quick] [--model DIR] [--prompts 256] [--samples 10] [--facts 100] [--repeats 3]

Model and prompts: the smoke world's pretrained base model (built once into outputs/bench/; or --model, a model of the
same world) and the mapping prompts of that world's train facts, as the probe asks them.
1. Decoding, the probe's workload: `--prompts` prompts x `--samples` samples at T=0.7, up to 32 new tokens, batches
   of 1,024 rows. Baseline: `model.generate(do_sample=True, num_return_sequences=n)` over the same left-padded batches.
   Ours: `decoding.generate` (each prompt's KV cache shared by its samples, finished rows dropped from the batch).
   Useful tokens are those the probe reads: each continuation up to and including its EOS (`generate` keeps finished
   rows in the batch, padding them). Target: ours >= 1.5x the baseline's useful tokens/s.
   Greedy check: both decode every prompt greedily and must write identical texts (the benchmark fails otherwise).
2. Mastery estimators: seconds per fact of `probe.probe` with estimator=likelihood and estimator=sampling on the same
   `--facts` facts with the paper's 21 templates x 10 samples (the likelihood estimator is the cheap stand-in).
Medians of `--repeats`, methods in alternating order. Writes benchmarks/results/probe.json (--quick: results/quick/).
"""
from __future__ import annotations

import argparse
import time

from common import ROOT, alternating, median, row, save, smoke_model

import torch

from sft_knowledge.config import ProbeConfig, register
from sft_knowledge.data.facts import KnowledgeBase
from sft_knowledge.data.synthetic import build_world
from sft_knowledge.decoding import _batches, _left_pad, encode_prompts, generate, pad_id
from sft_knowledge.models import load
from sft_knowledge.probe import probe

MAX_NEW, TEMPERATURE, BATCH = 32, 0.7, 1024


def smoke_world():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return build_world(OmegaConf.to_object(compose(config_name="config", overrides=["experiment=smoke"])).data.world)


def useful(new_tokens: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row's generated tokens up to and including its first EOS."""
    rows = []
    for r in new_tokens.tolist():
        rows.append(r[: r.index(eos) + 1] if eos in r else r)
    return rows


def hf_generate(model, tokenizer, prompts: list[str], n: int, temperature: float) -> list[list[int]]:
    """`generate` over the same batches as ours: the useful tokens of each continuation, prompt-major."""
    encoded = encode_prompts(tokenizer, prompts)
    out: list[list[int]] = [[]] * (len(prompts) * n)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {"do_sample": False}
    for idx in _batches([len(e) for e in encoded], max(1, BATCH // n)):
        ids, mask, _ = _left_pad(tokenizer, [encoded[i] for i in idx], model.device)
        gen = model.generate(input_ids=ids, attention_mask=mask, num_return_sequences=n, max_new_tokens=MAX_NEW,
                             pad_token_id=pad_id(tokenizer), eos_token_id=tokenizer.eos_token_id, **sampling)
        for row_, tokens in enumerate(useful(gen[:, ids.shape[1]:], tokenizer.eos_token_id)):
            out[idx[row_ // n] * n + row_ % n] = tokens
    return out


class CountingTokenizer:
    """The tokenizer, counting the tokens `decoding.generate` hands it to decode: each continuation up to its EOS."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def batch_decode(self, sequences, **kwargs):
        self.tokens += sum(map(len, sequences))
        return self.tokenizer.batch_decode(sequences, **kwargs)


def check_greedy(model, tokenizer, prompts: list[str]) -> None:
    theirs = tokenizer.batch_decode(hf_generate(model, tokenizer, prompts, 1, 0.0), skip_special_tokens=True)
    mine = generate(model, tokenizer, prompts, MAX_NEW, 0.0, BATCH)
    differ = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
    assert not differ, f"greedy outputs differ on {len(differ)} of {len(prompts)} prompts, e.g. {prompts[differ[0]]!r}: " \
                       f"ours {mine[differ[0]]!r}, generate {theirs[differ[0]]!r}"


def decoding_rates(model, tokenizer, prompts: list[str], n: int, repeats: int) -> tuple[dict, dict]:
    """(useful tokens/s, continuations/s) of each method, medians."""
    counted = CountingTokenizer(tokenizer)
    useful_tokens: dict[str, int] = {}

    def baseline() -> float:
        start = time.perf_counter()
        useful_tokens["baseline"] = sum(map(len, hf_generate(model, tokenizer, prompts, n, TEMPERATURE)))
        return time.perf_counter() - start

    def ours() -> float:
        counted.tokens = 0
        start = time.perf_counter()
        generate(model, counted, prompts, MAX_NEW, TEMPERATURE, BATCH, 0, None, n)
        useful_tokens["ours"] = counted.tokens
        return time.perf_counter() - start

    baseline(), ours()  # warm-up: the first calls of a kernel are slow
    seconds = {name: median(s) for name, s in alternating(repeats, {"ours": ours, "baseline": baseline}).items()}
    return ({name: useful_tokens[name] / s for name, s in seconds.items()},
            {name: len(prompts) * n / s for name, s in seconds.items()})


def estimator_costs(model, tokenizer, kb: KnowledgeBase, repeats: int) -> dict[str, float]:
    """Seconds per fact of the probe with each estimator, the paper's templates and samples."""
    n = len(kb.splits["train"])

    def timed(estimator: str):
        def once() -> float:
            start = time.perf_counter()
            probe(model, tokenizer, kb, ProbeConfig(estimator=estimator))
            return (time.perf_counter() - start) / n
        return once

    return {name: median(s) for name, s in alternating(repeats, {"likelihood": timed("likelihood"),
                                                                  "sampling": timed("sampling")}).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 prompts, 8 facts, 1 repeat (seconds)")
    parser.add_argument("--model", default=None, help="a model of the smoke world (default: its base model, built once)")
    parser.add_argument("--prompts", type=int, default=None, help="default 256 (--quick 32)")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--facts", type=int, default=None, help="facts of the estimator comparison (default 100; --quick 8)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick 1)")
    args = parser.parse_args()
    n_prompts = args.prompts or (32 if args.quick else 256)
    n_facts = args.facts or (8 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 3)
    model, tokenizer = load(args.model or smoke_model())
    world = smoke_world()
    facts = world.kb.splits["train"]
    prompts = [world.kb.relations[f.relation].mapping_prompts(f.subject, 1)[0] for f in facts[:n_prompts]]
    with torch.no_grad():
        check_greedy(model, tokenizer, prompts)
        tokens_per_s, continuations_per_s = decoding_rates(model, tokenizer, prompts, args.samples, repeats)
    kb = KnowledgeBase(world.kb.relations, {"train": facts[:n_facts], "test": [], "testood": []}, world.kb.aliases)
    per_fact = estimator_costs(model, tokenizer, kb, repeats)
    rows = [row("probe decoding, useful tokens/s", tokens_per_s["ours"], tokens_per_s["baseline"], "tokens/s", True,
                "HF generate", min_speedup=1.5),
            row("probe decoding, continuations/s", continuations_per_s["ours"], continuations_per_s["baseline"], "/s",
                True, "HF generate"),
            row("mastery estimate per fact (21 x 10)", per_fact["likelihood"], per_fact["sampling"], "s/fact", False,
                "sampling estimator")]
    save("probe", {"rows": rows, "prompts": n_prompts, "samples": args.samples, "max_new_tokens": MAX_NEW,
                   "temperature": TEMPERATURE, "facts": n_facts, "repeats": repeats, "greedy_identical": True,
                   "model": str(args.model or "smoke world base model"), "torch_threads": torch.get_num_threads()}, args.quick)


if __name__ == "__main__":
    main()
