"""Restoration benchmark (issue 15, target 1): this project's selection against ParamRestore's method, same run.

    python benchmarks/bench_restore.py [--size full|mid|small] [--quick] [--repeats 3] [--ratios 1 3 5 10 20 40 60]

Workload (generated, seeded): a bf16 LLaMA pair, vocab 32000; `full`: 16 layers, hidden 1024, FFN 2816 (271M
parameters, 206M in the region); `mid`: 8 layers, hidden 512, FFN 1408 (58M, 26M); `small`: 4 layers, hidden 256,
FFN 704 (about 20M, 3M); the base plus a heavy-tailed update (Gaussian noise with a log-normal scale, relative to each
scalar's magnitude), both saved with save_pretrained. Region: transformer. `--quick`: small, ratios 1 60, 1 repeat.

Baseline (ParamRestore's straightforward method, one process per ratio): load both models, the bf16 relative change
of the whole region flattened into one tensor, torch.topk, a global boolean mask, restore, save_pretrained.
Ours (one process for all ratios): load both, keep a fine-tuned copy (as the recipe does), select_thresholds for
all ratios (streaming, 2 passes), then per ratio restore_into the model and save_pretrained.

Each method runs in child processes; the times are their wall times including interpreter start and imports (the
baseline pays those once per ratio, as ParamRestore run per ratio does), medians of --repeats. Peak RSS is each
child's own peak resident set (VmHWM; also the one after its imports). The selection and restoration seconds per
region scalar give projections for LLaMA-3-8B and 70B on this CPU (`projection`; load and save are disk-bound and
left out). Writes benchmarks/results/restore.json (`--size` other than full: restore_<size>.json; --quick:
results/quick/restore.json) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import alternating, median, peak_rss_gib, row, save

SHAPES = {
    "full": dict(num_hidden_layers=16, hidden_size=1024, intermediate_size=2816, vocab_size=32000, num_attention_heads=16),
    "mid": dict(num_hidden_layers=8, hidden_size=512, intermediate_size=1408, vocab_size=32000, num_attention_heads=8),
    "small": dict(num_hidden_layers=4, hidden_size=256, intermediate_size=704, vocab_size=32000, num_attention_heads=4),
}
# Region scalars (the decoder layers' matrices) of the models the paper fine-tunes: layers x (q, k, v, o, 3 MLP).
PROJECTED = {"LLaMA-3-8B": 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336),
             "LLaMA-3-70B": 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)}
REGION, STRATEGY, SEED = "transformer", "top", 32


def make_pair(work: Path, shape: dict, seed: int) -> tuple[int, int]:
    """Save a seeded base model and its heavy-tailed update under work/base and work/ft; returns the parameter count
    and the region's."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, num_key_value_heads=shape["num_attention_heads"], tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(work / "base")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g) * torch.exp(1.5 * torch.randn(p.shape, generator=g))
            p.add_((p.float().abs() + 1e-3) * 0.01 * noise)  # bf16 rounds the smallest updates away: exact ties at 0
    model.save_pretrained(work / "ft")
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for n, p in model.named_parameters() if _in_region(n))


def _in_region(name: str) -> bool:  # ParamRestore's "transformer" region
    return "layers" in name and "norm" not in name


def baseline(work: Path, ratio: float, out: Path) -> dict:
    """ParamRestore's method for one ratio, as its param_restore.run does it."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    old = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.bfloat16)
    new = AutoModelForCausalLM.from_pretrained(work / "ft", dtype=torch.bfloat16)
    t_load = time.perf_counter()
    with torch.no_grad():
        old_p, new_p = dict(old.named_parameters()), dict(new.named_parameters())
        names = [n for n in new_p if _in_region(n)]
        total = sum(new_p[n].numel() for n in names)
        flat, offset = torch.empty(total, dtype=torch.bfloat16), 0
        for n in names:  # relative change in the weights' own dtype, like ParamRestore
            d = (new_p[n] - old_p[n]).abs().div(old_p[n].abs().add(1e-8))
            flat[offset:offset + d.numel()] = d.view(-1)
            offset += d.numel()
        k = int(total * ratio / 100)
        _, idx = torch.topk(flat, k)
        mask = torch.zeros(total, dtype=torch.bool)
        mask[idx] = True
        t_select = time.perf_counter()
        offset = 0
        for n in names:
            m = mask[offset:offset + new_p[n].numel()].view(new_p[n].shape)
            new_p[n].data[m] = old_p[n].data[m]
            offset += m.numel()
    t_restore = time.perf_counter()
    new.save_pretrained(out)
    t_save = time.perf_counter()
    return {"load_s": t_load - t0, "select_s": t_select - t_load, "restore_s": t_restore - t_select,
            "save_s": t_save - t_restore, "passes": None}


def ours(work: Path, ratios: list[float], out: Path) -> dict:
    """This project's method for all ratios in one process, as recipe.py runs it (copies in node memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft_knowledge.restore import restore_into, select_thresholds
    from sft_knowledge.structure import model_structure

    t0 = time.perf_counter()
    base_state = {n: t.detach() for n, t in AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.bfloat16).state_dict().items()}
    model = AutoModelForCausalLM.from_pretrained(work / "ft", dtype=torch.bfloat16)
    ft_state = {n: t.detach().clone() for n, t in model.state_dict().items()}  # recipe.weight_copy(model, "cpu")
    t_load = time.perf_counter()
    region = model_structure(model).region(REGION)
    selections = select_thresholds(base_state, ft_state, ratios, region, STRATEGY, SEED)
    t_select = time.perf_counter()
    restore_s = save_s = 0.0
    for ratio in ratios:
        t = time.perf_counter()
        restore_into(model, base_state, ft_state, selections[ratio], region, STRATEGY, SEED)
        restore_s += time.perf_counter() - t
        t = time.perf_counter()
        model.save_pretrained(out / str(ratio))
        save_s += time.perf_counter() - t
        shutil.rmtree(out / str(ratio))  # disk: 7 restored copies of the full model would not fit everywhere
    return {"load_s": t_load - t0, "select_s": t_select - t_load, "restore_s": restore_s, "save_s": save_s,
            "passes": selections[ratios[0]].passes}


def child(args: argparse.Namespace) -> None:
    import torch  # noqa: F401  (imported first so that start_rss_gib is what the libraries cost before any weights)
    from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: F401

    rss_start = peak_rss_gib()
    out = Path(args.out)
    result = baseline(Path(args.work), args.ratios[0], out) if args.child == "baseline" else ours(Path(args.work), args.ratios, out)
    shutil.rmtree(out, ignore_errors=True)
    result |= {"peak_rss_gib": peak_rss_gib(), "start_rss_gib": rss_start}
    print("RESULT " + json.dumps(result), flush=True)


def run_child(kind: str, work: Path, ratios: list[float]) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{kind}-"))
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), "--out", str(out), "--ratios", *map(str, ratios)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"error: the {kind} child failed:\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]) | {"wall_s": wall}


def baseline_all_ratios(work: Path, ratios: list[float]) -> dict:
    """One repeat of the baseline: one process per ratio, summed."""
    per_ratio = [run_child("baseline", work, [r]) for r in ratios]
    base = {key: sum(p[key] for p in per_ratio) for key in ("wall_s", "load_s", "select_s", "restore_s", "save_s")}
    base["peak_rss_gib"] = max(p["peak_rss_gib"] for p in per_ratio)
    base["start_rss_gib"] = max(p["start_rss_gib"] for p in per_ratio)
    base["passes"] = None
    return base


def table(summary: dict) -> str:
    rows = ["| method | wall s (median) | load s | select s | restore s | save s | selection passes | peak RSS GiB | "
            "RSS / two models | (RSS - imports) / two models |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, label in (("baseline", "ParamRestore (one process per ratio)"), ("ours", "sft_knowledge (one process)")):
        m = summary[name]
        rows.append(f"| {label} | {m['wall_s']:.1f} | {m['load_s']:.1f} | {m['select_s']:.1f} | {m['restore_s']:.1f} | "
                    f"{m['save_s']:.1f} | {m['passes'] if m['passes'] is not None else '-'} | {m['peak_rss_gib']:.2f} | "
                    f"{m['peak_rss_gib'] / summary['two_models_gib']:.2f} | "
                    f"{(m['peak_rss_gib'] - m['start_rss_gib']) / summary['two_models_gib']:.2f} |")
    rows.append(f"\nTotal time ours / baseline: **{summary['time_ratio']:.3f}** (target <= 0.2); "
                f"{summary['n_params'] / 1e6:.0f}M parameters, ratios {summary['ratios']}, {summary['repeats']} repeat(s).")
    return "\n".join(rows)


def projection(summary: dict) -> dict:
    """Selection plus restoration of every ratio for the paper's models, from this run's seconds per region scalar
    (CPU, weight copies in node memory): a projection, not a measurement."""
    n, k = summary["n_region"], len(summary["ratios"])
    per_scalar = {name: {"select_all_ratios_s": summary[name]["select_s"] / n, "restore_one_ratio_s": summary[name]["restore_s"] / (n * k)}
                  for name in ("baseline", "ours")}
    return {"per_scalar_s": per_scalar, "ratios": k, "models": {
        model: {"region_scalars": scalars} | {name: scalars * (c["select_all_ratios_s"] + k * c["restore_one_ratio_s"])
                                              for name, c in per_scalar.items()}
        for model, scalars in PROJECTED.items()}}


def rows(summary: dict) -> list[dict]:
    """The report's lines: wall time, selection passes, and peak memory both raw and as the issue's target reads it (what
    the run adds to the process it starts in, in units of the two models' bf16 size)."""
    ours, base, two = summary["ours"], summary["baseline"], summary["two_models_gib"]
    added = lambda m: (m["peak_rss_gib"] - m["start_rss_gib"]) / two  # noqa: E731
    return [
        row(f"restoration, {len(summary['ratios'])} ratios, {summary['n_params'] / 1e6:.0f}M parameters (wall)", ours["wall_s"],
            base["wall_s"], "s", False, "ParamRestore", min_speedup=5),
        row("restoration, passes over the weights to select every ratio", ours["passes"], len(summary["ratios"]), "passes",
            False, "ParamRestore: one per ratio", target="ours <= 2", met=ours["passes"] <= 2),
        row("restoration peak RSS above the start, in two models' size", added(ours), added(base), "x", False, "ParamRestore",
            target="ours <= 1.6x", met=added(ours) <= 1.6),
        row("restoration peak RSS", ours["peak_rss_gib"], base["peak_rss_gib"], "GiB", False, "ParamRestore")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SHAPES), default="full", help="full: 271M parameters; mid: 58M; small: 20M")
    parser.add_argument("--quick", action="store_true", help="small, ratios 1 60, 1 repeat (about 20 s)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick 1)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help="default 1 3 5 10 20 40 60 (--quick 1 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    repeats = args.repeats or (1 if args.quick else 3)
    ratios = args.ratios or ([1, 60] if args.quick else [1, 3, 5, 10, 20, 40, 60])
    size = "small" if args.quick else args.size
    if repeats < 1:
        sys.exit(f"error: --repeats={repeats} must be at least 1")
    if bad := [r for r in ratios if not 0 < r <= 100]:
        sys.exit(f"error: --ratios={bad[0]} must be a percentage in (0, 100]")
    with tempfile.TemporaryDirectory(prefix="bench_restore-") as tmp:
        work = Path(tmp)
        n_params, n_region = make_pair(work, SHAPES[size], args.seed)
        runs = alternating(repeats, {"baseline": lambda: baseline_all_ratios(work, ratios),
                                     "ours": lambda: run_child("ours", work, ratios)})
    summary = {"workload": size, "shape": SHAPES[size], "n_params": n_params, "n_region": n_region, "ratios": ratios,
               "repeats": repeats, "region": REGION, "two_models_gib": 2 * 2 * n_params / 2**30}
    for name, measured in runs.items():
        summary[name] = {key: median([m[key] for m in measured]) if measured[0][key] is not None else None for key in measured[0]}
    summary["time_ratio"] = summary["ours"]["wall_s"] / summary["baseline"]["wall_s"]
    summary["all_repeats"] = runs
    summary["projection"] = projection(summary)
    summary["rows"] = rows(summary)
    print(table(summary))
    save("restore" if size == "full" or args.quick else f"restore_{size}", summary, args.quick)


if __name__ == "__main__":
    main()
