"""`python -m sft_knowledge.plan <the arguments of sft_knowledge.run>`: a plan before the work.

The command is expanded as a run expands it (every cell of a sweep) and every cell is validated; then, without running
anything or writing anything, the plan prints the cells, which heavy stages (base model, probe, SFT) and which runs
are already in the cache, the model's size from its config.json, the GPU memory of each stage on the GPUs a cell asks
for, and the GPU-hours per stage with the assumptions behind them (cost.py has the arithmetic). A cell that cannot fit
is refused, one `error:` line per reason, and the exit code is 1, before anything is submitted.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache, digest
from .config import Config, effective, run_key, semantic
from .cost import Assumptions, Shape, gpu_hours, memory, model_config, refusals
from .cache import CacheError
from .errors import ConfigError, DataError, ModelError
from .overrides import check_command_line, compose_cells


def base_spec(cfg: Config) -> dict:
    """The base model's cache key, as recipe.load_base_model makes it (a hub model has no entry: its spec only
    enters the probe's key)."""
    from .models import hub_source, smollm2_spec, tiny_world_spec

    m = cfg.model
    if m.source == "tiny_world":
        return tiny_world_spec(m.pretrain, cfg.data.world)
    if m.source == "smollm2_gguf":
        return smollm2_spec()
    return {"source": "hub", "id": hub_source(m.hub_id, m.path), "dtype": m.dtype}


@dataclass
class CellState:
    """What of one cell the cache already holds; None: cannot be told before the run (its dataset is not here)."""
    done: bool  # its results.json
    base: bool | None  # the base model's entry (None for a hub model: its weights are not a cache entry)
    probe: bool | None
    sft: bool | None
    train_levels: list[int] | None = None  # the cached probe's train facts per level, for SFT's steps


class _UnknownCurve:
    """The KL curve's part of SFT's key without its prompts (they come from the base model's answers)."""

    def __init__(self, cfg: Config):
        self.points, self.top_k = cfg.kl.curve_points, cfg.kl.top_k

    def spec(self) -> dict | None:
        return None if self.points == 0 else {"top_k": self.top_k, "points": self.points}


def cache_state(cfg: Config, cache: Cache, sft_specs: list[dict], data_specs: dict[str, dict | None]) -> CellState:
    """Which heavy stages of `cfg` are in `cache`, from their keys (recipe.py's probe_spec and sft_spec), read only.
    SFT's key holds the digest of the KL curve's prompts, which the base model's answers decide; an entry counts when
    every other part of its key matches. `data_specs` memoises the datasets' specs."""
    done = (Path(cfg.paths.runs_dir) / run_key(cfg) / "results.json").is_file()
    has_base = cache.has("base_model", base_spec(cfg)) if cfg.model.source != "hub" else None
    if not (cache.root / "probe").is_dir():  # a new cache: nothing to look up (and no dataset to read)
        return CellState(done, has_base, False, False)
    from .recipe import BaseModel, Data, Mastery, load_data, prescreen_spec, probe_spec, sft_spec

    base = BaseModel("", base_spec(cfg), None, None, False)
    data_key = digest([cfg.data.name, semantic(cfg)["data"]["entityquestions"]])
    if data_key not in data_specs:
        data_specs[data_key] = _data_spec(cfg, cache, load_data)
    spec = data_specs[data_key]
    if spec is not None and cfg.data.subset.candidates is not None:
        spec = prescreen_spec(cfg, Data(None, None, spec), base)
    if spec is None and cfg.data.name != "synthetic":
        return CellState(done, has_base, None, None)
    probe = probe_spec(cfg, Data(None, None, spec), base)
    if not cache.has("probe", probe):
        return CellState(done, has_base, False, False)
    levels = json.loads((cache.entry("probe", probe) / "probe.json").read_text())["level"]["train"]
    wanted = json.loads(json.dumps(sft_spec(cfg, effective(cfg), Mastery(None, probe, True), _UnknownCurve(cfg)), default=str))
    sft = any(_same_sft(entry, wanted) for entry in sft_specs)
    return CellState(done, has_base, True, sft, [levels.count(lv) for lv in range(5)])


def _data_spec(cfg: Config, cache: Cache, load_data) -> dict | None:
    """A real dataset's spec when its files are here (a run would fetch them: not the plan); None otherwise."""
    if cfg.data.name == "synthetic":
        return None
    from .data.entityquestions import resolve_root

    try:
        resolve_root(cfg.data.entityquestions)  # without the cache: never fetches
    except DataError:
        return None
    return load_data(cfg, cache).spec


def _same_sft(entry: dict, wanted: dict) -> bool:
    curve = entry.get("kl_curve")
    return ({k: v for k, v in entry.items() if k != "kl_curve"} == {k: v for k, v in wanted.items() if k != "kl_curve"}
            and (curve is None) == (wanted.get("kl_curve") is None)
            and (curve is None or {k: curve[k] for k in ("top_k", "points")} == wanted["kl_curve"]))


# --- the listing ----------------------------------------------------------------------------------------------------

def axes(cells: list[list[str]]) -> dict[str, list[str]]:
    """The keys whose value differs between cells, with their values in order."""
    values: dict[str, list[str]] = defaultdict(list)
    for cell in cells:
        for o in cell:
            key, _, value = o.partition("=")
            if value not in values[key]:
                values[key].append(value)
    return {k: v for k, v in values.items() if len(v) > 1}


def ranges(numbers: list[int]) -> str:
    """0-5, 9, 12-13"""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def _count(states: list[CellState], field: str) -> str:
    got = [i for i, s in enumerate(states) if getattr(s, field)]
    unknown = sum(getattr(s, field) is None for s in states)
    if unknown == len(states):
        return "unknown"
    text = f"{len(got)} of {len(states)}" + (f" (cells {ranges(got)})" if 0 < len(got) < len(states) else "")
    return text + (f", {unknown} unknown" if unknown else "")


def sweep_hours(cfgs: list[Config], states: list[CellState], shape: Shape, a: Assumptions) -> dict[str, list[float]]:
    """Per stage: [GPU-hours, GPU-hours held (wall x the cell's GPUs), GPU-hours left to run]. The probe (and the
    pre-screen) is computed once per base model, probe and dataset; SFT once per training setting; the rest per cell."""
    total: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    seen: set[tuple[str, str]] = set()
    for cfg, state in zip(cfgs, states):
        sem = semantic(cfg)
        subset = cfg.data.subset.candidates is not None  # the pre-screened subset is drawn by data.seed
        shared = {"probe": digest([sem["model"], sem["probe"], sem["data"] | {"size": None, "seed": cfg.data.seed if subset else None}]),
                  "sft": digest({k: v for k, v in sem.items() if k not in ("eval", "restore")})}
        for stage, s in gpu_hours(cfg, shape, a, state.train_levels).items():
            owner = {"probe": "probe", "prescreen": "probe", "sft": "sft", "checkpoints": "sft"}.get(stage)
            if owner is not None:
                if (stage, shared[owner]) in seen:
                    continue
                seen.add((stage, shared[owner]))
            cached = state.done or (owner == "probe" and state.probe) or (owner == "sft" and state.sft)
            row = total[stage]
            row[0] += s.gpu_hours
            row[1] += s.wall_hours * max(cfg.resources.gpus, 1)
            row[2] += 0 if cached else s.gpu_hours
    return dict(total)


def _count_of(n: int) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _h(hours: float) -> str:
    return f"{hours:8.2f}" if hours >= 0.01 or hours == 0 else f"{hours:8.1e}"


def plan(argv: list[str], out=sys.stdout) -> int:
    """Print the plan of `python -m sft_knowledge.run <argv>`; return the exit code (1: a cell cannot fit)."""
    flag = next((arg for arg in argv if arg.startswith("--")), None)
    if flag is not None:
        raise ConfigError(f"{flag}: the plan takes a run's overrides (and -m), not Hydra's other flags")
    cells = check_command_line(argv, submit=False)
    cfgs = compose_cells(cells)
    a = Assumptions.default()
    say = lambda line="": print(line, file=out)  # noqa: E731
    varying = axes(cells)
    fixed = [o for o in cells[0] if o.partition("=")[0] not in varying]
    say(f"{len(cells)} cell{'s' * (len(cells) > 1)}" + (": " + " x ".join(f"{k} ({len(v)})" for k, v in varying.items()) if varying else ""))
    for key, values in varying.items():
        say(f"  {key} = {', '.join(values)}")
    say(f"  fixed: {' '.join(fixed) or '(defaults)'}")

    cfg = cfgs[0]
    cache = Cache(cfg.paths.cache_dir)
    sft_specs = cache.specs("sft")
    data_specs: dict[str, dict | None] = {}
    states = [cache_state(c, Cache(c.paths.cache_dir), sft_specs, data_specs) for c in cfgs]
    say(f"cache ({cfg.paths.cache_dir}): base model {_count(states, 'base') if cfg.model.source != 'hub' else 'not a cache entry (hub weights)'}; "
        f"probe {_count(states, 'probe')}; SFT {_count(states, 'sft')}; runs done {_count(states, 'done')}")
    if any(s.probe is None for s in states):
        say(f"  probe and SFT unknown: data={cfg.data.name} is not on this machine (a run fetches it)")
    if cfg.kl.curve_points > 0 and any(s.sft for s in states):
        say("  (an SFT entry counts when its key matches but for the KL curve's prompts, which the base model's answers decide)")

    config, source = model_config(cfg)
    if config is None:
        say(f"model={cfg.model.name}: {source}")
        return 0
    shape = Shape.from_config(config)
    say(f"model={cfg.model.name} ({source}): {_count_of(shape.params)} parameters ({shape.params:,}): hidden {shape.hidden}, {shape.layers} layers, "
        f"{shape.heads} heads ({shape.kv_heads} for K/V), MLP {shape.intermediate} {'gated' if shape.gated else 'plain'}, "
        f"vocab {shape.vocab:,}, {'tied' if shape.tied else 'untied'} head")
    t = cfg.train
    strategy = f"fsdp over {t.fsdp_processes or max(cfg.resources.gpus, 1)}" + (" with CPU offload" if t.fsdp_cpu_offload else "") \
        if t.strategy == "fsdp" else "one process"
    say(f"resources: {cfg.resources.gpus} GPU(s) of {a.gpu_memory_gb:g} GB, {cfg.resources.mem_gb} GB node memory, weight copies on "
        f"{cfg.resources.weight_copies}; train: {t.method}, {strategy}, {t.precision}, model.dtype={cfg.model.dtype}")
    say(f"memory per stage ({'GB on the busiest GPU' if cfg.resources.gpus else 'GB; no GPU asked for'}, {a.reserve_gb:g} GB reserved besides):")
    for stage, m in memory(cfg, shape, a).items():
        node = f"; node {m.node_gb:.1f} GB" if m.node_gb else ""
        say(f"  {stage:<8} {m.gpu_gb:7.1f}{node}  {m.what}")

    hours = sweep_hours(cfgs, states, shape, a)
    one = gpu_hours(cfg, shape, a, states[0].train_levels)
    say(f"GPU-hours (one GPU's work; held: wall x resources.gpus; left: less what is cached):")
    say(f"  {'stage':<12} {'GPU-h':>8} {'held':>8} {'left':>8}  arithmetic of cell 0")
    for stage, row in hours.items():
        say(f"  {stage:<12} {_h(row[0])} {_h(row[1])} {_h(row[2])}  {one[stage].how}")
    totals = [sum(row[i] for row in hours.values()) for i in range(3)]
    say(f"  {'total':<12} {_h(totals[0])} {_h(totals[1])} {_h(totals[2])}")
    # docs/report.md's table before the plan had no row for checkpoint writes
    say(f"  {'without checkpoint writes':<12} {_h(totals[0] - hours['checkpoints'][0])}")
    say(f"assumptions: {a.describe()}")

    refused: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cfgs):
        for reason in refusals(c, shape, a):
            refused[reason].append(i)
    for reason, numbers in refused.items():
        which = "every cell" if len(numbers) == len(cfgs) > 1 else f"cell{'s' * (len(numbers) > 1)} {ranges(numbers)}"
        print(f"error: {which}: {reason}", file=sys.stderr)
    return 1 if refused else 0


def main() -> None:
    try:
        code = plan(sys.argv[1:])
    except (ConfigError, DataError, ModelError, CacheError) as err:
        sys.exit(f"error: {str(err).splitlines()[0]}")
    sys.exit(code)


if __name__ == "__main__":
    main()
