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
from dataclasses import asdict, dataclass
from pathlib import Path

from .cache import Cache, CacheError, digest
from .config import Config, effective, run_key, semantic
from .cost import Assumptions, Shape, gpu_hours, memory, model_config, refusals
from .errors import ConfigError, DataError, ModelError
from .overrides import check_command_line, compose_cells
from .sources import source_of


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
    source = source_of(cfg)
    has_base = cache.has("base_model", source.spec(cfg)) if source.in_cache else None
    if not (cache.root / "probe").is_dir():  # a new cache: nothing to look up (and no dataset to read)
        return CellState(done, has_base, False, False)
    from .recipe import BaseModel, Data, Mastery, prescreen_spec, probe_spec, sft_spec

    base = BaseModel("", source.spec(cfg), None, None, False)
    data_key = digest([cfg.data.name, semantic(cfg)["data"]["entityquestions"]])
    if data_key not in data_specs:
        data_specs[data_key] = _data_spec(cfg, cache)
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


def _data_spec(cfg: Config, cache: Cache) -> dict | None:
    """A real dataset's spec when its files are here (a run would fetch them: not the plan); None otherwise."""
    if cfg.data.name == "synthetic":
        return None
    from .data.entityquestions import resolve_root
    from .recipe import load_data

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


def sweep_hours(cfgs: list[Config], states: list[CellState], shapes: list[Shape], a: Assumptions) -> dict[str, list[float]]:
    """Per stage: [GPU-hours, GPU-hours held (wall x the cell's GPUs), GPU-hours left to run]. The probe (and the
    pre-screen) is computed once per base model, probe and dataset; SFT once per training setting; the rest per cell."""
    total: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    seen: set[tuple[str, str]] = set()
    for cfg, state, shape in zip(cfgs, states, shapes):
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
    say(f"{len(cells)} cell{'s' * (len(cells) > 1)}" + (": " + " x ".join(f"{k} ({len(v)})" for k, v in varying.items()) if varying else ""))
    for key, values in varying.items():
        say(f"  {key} = {', '.join(values)}")
    say(f"  fixed: {' '.join(o for o in cells[0] if o.partition('=')[0] not in varying) or '(defaults)'}")

    sft_specs = {d: Cache(d).specs("sft") for d in {c.paths.cache_dir for c in cfgs}}
    data_specs: dict[str, dict | None] = {}
    states = [cache_state(c, Cache(c.paths.cache_dir), sft_specs[c.paths.cache_dir], data_specs) for c in cfgs]
    hub = all(c.model.source == "hub" for c in cfgs)
    say(f"cache ({cfgs[0].paths.cache_dir}): base model {'not a cache entry (hub weights)' if hub else _count(states, 'base')}; "
        f"probe {_count(states, 'probe')}; SFT {_count(states, 'sft')}; runs done {_count(states, 'done')}")
    if any(s.probe is None for s in states):
        say("  probe and SFT unknown where the dataset is not on this machine (a run fetches it)")
    if any(s.sft and c.kl.curve_points > 0 for s, c in zip(states, cfgs)):
        say("  (an SFT entry counts when its key matches but for the KL curve's prompts, which the base model's answers decide)")

    shapes = model_shapes(cfgs, say)
    known = [i for i, shape in enumerate(shapes) if shape is not None]
    if not known:
        return 0
    say_memory([cfgs[i] for i in known], [shapes[i] for i in known], a, say)
    say_hours([cfgs[i] for i in known], [states[i] for i in known], [shapes[i] for i in known], a, say)
    say(f"assumptions: {a.describe()}")

    refused: dict[str, list[int]] = defaultdict(list)
    for i in known:
        for reason in refusals(cfgs[i], shapes[i], a):
            refused[reason].append(i)
    for reason, numbers in refused.items():
        which = "every cell" if len(numbers) == len(cfgs) > 1 else f"cell{'s' * (len(numbers) > 1)} {ranges(numbers)}"
        print(f"error: {which}: {reason}", file=sys.stderr)
    return 1 if refused else 0


def model_shapes(cfgs: list[Config], say) -> list[Shape | None]:
    """Each cell's model shape (read once per model config), saying what each model is or why it cannot be read."""
    shapes: dict[str, Shape | None] = {}
    out = []
    for cfg in cfgs:
        key = digest(asdict(cfg.model))
        if key not in shapes:
            config, source = model_config(cfg)
            shapes[key] = Shape.from_config(config) if config is not None else None
            shape = shapes[key]
            if shape is None:
                say(f"model={cfg.model.name}: {source}")
            else:
                say(f"model={cfg.model.name} ({source}): {_count_of(shape.params)} parameters ({shape.params:,}): hidden "
                    f"{shape.hidden}, {shape.layers} layers, {shape.heads} heads ({shape.kv_heads} for K/V), MLP "
                    f"{shape.intermediate} {'gated' if shape.gated else 'plain'}, vocab {shape.vocab:,}, "
                    f"{'tied' if shape.tied else 'untied'} head")
        out.append(shapes[key])
    return out


def say_memory(cfgs: list[Config], shapes: list[Shape], a: Assumptions, say) -> None:
    """GPU and node memory per stage, once for each distinct answer among the cells."""
    groups: dict[str, list[int]] = defaultdict(list)
    listings = {}
    for i, (cfg, shape) in enumerate(zip(cfgs, shapes)):
        t, r = cfg.train, cfg.resources
        strategy = (f"fsdp over {t.fsdp_processes or max(r.gpus, 1)}" + (" with CPU offload" if t.fsdp_cpu_offload else "")
                    if t.strategy == "fsdp" else "one process")
        lines = [f"resources: {r.gpus} GPU(s) of {a.gpu_memory_gb:g} GB, {r.mem_gb} GB node memory, weight copies on "
                 f"{r.weight_copies}; train: {t.method}, {strategy}, {t.precision}, model.dtype={cfg.model.dtype}",
                 f"memory per stage ({'GB on the busiest GPU' if r.gpus else 'GB; no GPU asked for'}, {a.reserve_gb:g} GB reserved besides):"]
        for stage, m in memory(cfg, shape, a).items():
            lines.append(f"  {stage:<8} {m.gpu_gb:7.1f}" + (f"; node {m.node_gb:.1f} GB" if m.node_gb else "") + f"  {m.what}")
        listing = "\n".join(lines)
        groups[listing].append(i)
        listings[listing] = lines
    for listing, numbers in groups.items():
        if len(groups) > 1:
            say(f"cell{'s' * (len(numbers) > 1)} {ranges(numbers)}:")
        for line in listings[listing]:
            say(line)


def say_hours(cfgs: list[Config], states: list[CellState], shapes: list[Shape], a: Assumptions, say) -> None:
    hours = sweep_hours(cfgs, states, shapes, a)
    first = gpu_hours(cfgs[0], shapes[0], a, states[0].train_levels)
    say("GPU-hours (one GPU's work; held: wall x resources.gpus; left: less what is cached):")
    say(f"  {'stage':<12} {'GPU-h':>8} {'held':>8} {'left':>8}  arithmetic of the first cell")
    for stage, row in hours.items():
        say(f"  {stage:<12} {_h(row[0])} {_h(row[1])} {_h(row[2])}  {first[stage].how if stage in first else ''}")
    totals = [sum(row[i] for row in hours.values()) for i in range(3)]
    say(f"  {'total':<12} {_h(totals[0])} {_h(totals[1])} {_h(totals[2])}")
    # docs/report.md's table before the plan had no row for checkpoint writes
    say(f"  {'without checkpoint writes':<12} {_h(totals[0] - hours['checkpoints'][0])}")


def main() -> None:
    try:
        code = plan(sys.argv[1:])
    except (ConfigError, DataError, ModelError, CacheError) as err:
        sys.exit(f"error: {str(err).splitlines()[0]}")
    sys.exit(code)


if __name__ == "__main__":
    main()
