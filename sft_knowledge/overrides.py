"""The command line, checked before anything runs.

Every cell that a command would run (one, or each cell of a sweep) is composed and validated first, so a
typo or a bad value costs one `error:` line and a second, not a pretraining or an array of failed SLURM
jobs. Hydra's own messages for a bad override span 5-15 lines; here each becomes one line naming the
key. The sweep is expanded the way Hydra's basic sweeper expands it (the cartesian product of the
values; a key given twice keeps its first place and its last value), so `status` lists a sweep's
planned cells with the same function. Hydra's flags are read with Hydra's own parser: a combination it would
answer with a traceback (`-m --cfg job`) is one line here, and what `--cfg`, `--info` or `--help` shows is
checked as the one config it is. A sweep on SLURM also checks that SLURM is there (slurm_check.py).
"""
from __future__ import annotations

import argparse
import copy
import difflib
import itertools
import sys
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser  # the parser hydra.main reads sys.argv with (hydra-core is pinned)
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, OmegaConf

from .config import Config, ConfigError, register, validate
from .cost import check_fits
from .slurm_check import check_slurm
from .sources import check_source

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def expand(overrides: list[str]) -> list[list[str]]:
    """The overrides of every cell of a sweep over `overrides`, in Hydra's job-number order."""
    axes: dict[str, list[str]] = {}
    for o in _parse(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ConfigError(f"{o.input_line}: only lists of values (a,b,c) can be swept here")
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(cell) for cell in itertools.product(*axes.values())]


def axis_cells(overrides: list[str]) -> list[list[str]]:
    """The cells of the sweep that hold some value for the first time: every value of every swept key is composed
    and validated once (a sum of the axes, not their product); what only a combination of values breaks, such as a
    size larger than one bucket, is still found when that cell starts, before its first stage."""
    seen: set[str] = set()
    out = []
    for cell in expand(overrides):
        if not seen.issuperset(cell):
            out.append(cell)
            seen.update(cell)
    return out


def check_command_line(argv: list[str], submit: bool = True) -> list[list[str]]:
    """Raise ConfigError (one line) unless every cell that `python -m sft_knowledge.run <argv>` runs is a valid config,
    a cell that asks for GPUs fits in them (cost.check_fits), and, for a sweep on SLURM, SLURM is there; return the
    config overrides of every cell. A command that only shows (--cfg, --info, --help) is checked as one config, and
    nothing is written or asked of SLURM for it. `submit=False` (sft_knowledge.plan) only reads the command: its cells
    are returned unchecked, and nothing is written or asked of SLURM."""
    if "--version" in argv:
        return []  # argparse would print Hydra's version and exit here
    args = _hydra_args(argv)
    if args.config_path or args.config_name or args.config_dir or args.experimental_rerun or args.shell_completion:
        return []  # another config, a rerun or shell completion: Hydra's own business
    shows = _shown(args)
    parsed = _parse(args.overrides)
    if hydra_swept := next((o for o in parsed if o.is_sweep_override() and o.is_hydra_override()), None):
        key, value = hydra_swept.input_line.split("=", 1)
        quoted = f" (a value holding commas is one value when quoted: {key}='{value}')" if "." in key else ""
        raise ConfigError(f"{hydra_swept.input_line}: Hydra's own settings cannot be swept: give {key} one value{quoted}")
    check_group_options(parsed)
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # The first value of every swept key tells whether this is a sweep (-m, or an experiment with hydra.mode) and its params.
        first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line
                 for o in parsed]
        hydra_cfg = _compose(first, with_hydra=True).hydra
        multirun = shows is None and (args.multirun or str(hydra_cfg.mode) == "RunMode.MULTIRUN")
        if not multirun:
            swept = next((o for o in parsed if o.is_sweep_override()), None)
            if swept is not None and shows:
                raise ConfigError(f"{swept.input_line} gives several values, and {shows} shows one config: give "
                                  f"{swept.get_key_element()} one value")
            if swept is not None:
                raise ConfigError(f"{swept.input_line} gives several values: add -m to sweep them, "
                                  f"or write a list as {swept.get_key_element()}=[...]")
            every = cells = [args.overrides]
        else:
            params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
            every, cells = expand(params + args.overrides), axis_cells(params + args.overrides)
        if not submit:  # sft_knowledge.plan composes and validates every cell itself (compose_cells)
            return [config_part(cell) for cell in every]
        checked = []
        for cell in cells:
            dcfg = _compose(config_part(cell), with_hydra=False)
            check_keys(dcfg)
            cfg: Config = OmegaConf.to_object(dcfg)
            validate(cfg)
            check_source(cfg)
            if cfg.eval.harness.tasks:
                from .harness import check_harness  # lm-eval and torch: only for a command that asks for the harness

                check_harness(cfg.eval.harness)
            checked.append(cfg)
        # submitit's SLURM launcher, picked as hydra/launcher=slurm (launchers/hydra/launcher/) or submitit_slurm
        slurm = multirun and str(hydra_cfg.launcher.get("_target_", "")).endswith(".SlurmLauncher")
        partition = hydra_cfg.launcher.get("partition") if slurm else None
    GlobalHydra.instance().clear()
    if shows:
        return [config_part(cell) for cell in every]
    for cfg in checked:
        check_fits(cfg)
    if slurm:
        check_slurm(partition)
    for output_dir in sorted({Path(cfg.paths.output_dir) for cfg in checked}):  # only once every cell is valid: a bad command leaves nothing behind
        _check_writable(output_dir)
    return [config_part(cell) for cell in every]


def compose_cells(cells: list[list[str]]) -> list[Config]:
    """The validated Config of every cell, composed fast: Hydra composes each distinct choice of config groups once
    (a sweep of 126 cells has 6 or so), and each cell's plain `key=value` overrides are set on a copy of it, as Hydra
    sets them after the defaults; a cell with another kind of override (+key, ~key, ++key) is composed whole."""
    register()
    GlobalHydra.instance().clear()
    composed: dict[tuple[str, ...], DictConfig] = {}
    out = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for cell in cells:
            parsed = _parse(cell)
            plain = [o for o in parsed if o.type == OverrideType.CHANGE and o.package is None
                     and not (CONF_DIR / o.key_or_group).is_dir()]
            whole = tuple(o.input_line for o in parsed if all(o is not p for p in plain))
            if whole not in composed:
                composed[whole] = _compose(list(whole), with_hydra=False)
            dcfg = copy.deepcopy(composed[whole])
            try:
                for o in plain:
                    OmegaConf.update(dcfg, o.key_or_group, o.value(), merge=False)
                check_keys(dcfg)
                cfg: Config = OmegaConf.to_object(dcfg)
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - a key or value OmegaConf refuses: one line, as from Hydra
                raise ConfigError(_composition_message(err, cell)) from None
            validate(cfg)
            check_source(cfg)
            out.append(cfg)
    GlobalHydra.instance().clear()
    return out


def config_part(cell: list[str]) -> list[str]:
    """A cell's overrides without Hydra's own settings (hydra.*, hydra/launcher=...): what composes its config."""
    return [o for o in cell if not o.lstrip("+~").startswith("hydra")]


def _hydra_args(argv: list[str]) -> argparse.Namespace:
    """The command line as Hydra's own parser reads it; its complaints (usage and message) become one line."""
    parser = get_args_parser()

    def refuse(message: str) -> NoReturn:
        if message.startswith("unrecognized"):
            message += ": Hydra's flags (-m, --cfg, ...) go before the overrides"
        elif message.startswith("argument --info") and "=" in message:  # `--info experiment=paper`
            message += ": --info takes the next word as what to show: write --info all, or put --info last"
        raise ConfigError(message)

    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_args(argv)


def _shown(args: argparse.Namespace) -> str | None:
    """The flag that shows something instead of running (--help, --hydra-help, --cfg, --info), or None; the
    combinations that Hydra answers with a traceback are refused here, in Hydra's order."""
    if args.help:
        return "--help"  # Hydra prints the help before it looks at any other flag
    if args.resolve and args.cfg is None:
        raise ConfigError("--resolve only changes what --cfg (or --help) shows: add --cfg job, or drop --resolve")
    if args.hydra_help:
        return "--hydra-help"
    given = [flag for flag, on in (("--run", args.run), ("-m", args.multirun), ("--cfg", args.cfg is not None),
                                   ("--info", args.info is not None)) if on]
    shows = next((flag for flag in given if flag in ("--cfg", "--info")), None)
    if "-m" in given and shows:
        raise ConfigError(f"{shows} shows one config, not a sweep: drop -m and give each key one value")
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} cannot be given together: choose one")
    return shows


def check_group_options(parsed) -> None:
    """Hydra's own message for an unknown option of a config group spans a dozen lines; say it in one."""
    for o in parsed:
        group = o.get_key_element().removeprefix("override ").lstrip("+~")
        if not (CONF_DIR / group).is_dir() or o.value_type is None:  # `~group`: a deletion, no option
            continue
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        for option in (o.sweep_string_iterator() if o.is_discrete_sweep() else [o.get_value_element_as_str()]):
            if option not in options and option != "null" and not any(ch in option for ch in "()[]{}$"):
                raise ConfigError(f"{group}={option} is not an option of '{group}': choose one of {', '.join(options)}")


def _check_writable(output_dir: Path) -> None:
    """Hydra makes its job directory under paths.output_dir before any of our code runs: try it here, in one line."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as err:
        raise ConfigError(f"paths.output_dir={output_dir} is not writable ({err.strerror}): point it at a writable directory") from None


def check_keys(dcfg: DictConfig, schema: type = Config, prefix: str = "") -> None:
    """Reject a key the schema does not define (`+data.szie=240` is otherwise dropped without a word)."""
    names = {f.name: f for f in fields(schema)}
    for key in dcfg:
        if key not in names:
            dotted = f"{prefix}{key}"
            close = difflib.get_close_matches(dotted, schema_keys(), n=1, cutoff=0.6)
            hint = f": did you mean {close[0]}?" if close else ": see sft_knowledge/config.py for the keys"
            raise ConfigError(f"{dotted} is not a config key{hint}")
        default = names[key].default_factory() if callable(names[key].default_factory) else None  # type: ignore[misc]
        if is_dataclass(default) and isinstance(dcfg[key], DictConfig):
            check_keys(dcfg[key], type(default), f"{prefix}{key}.")


def schema_keys(schema: Any = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, e.g. data.size, train.lr."""
    out = []
    for f in fields(schema):
        default = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
        out += schema_keys(type(default), f"{prefix}{f.name}.") if is_dataclass(default) else [f"{prefix}{f.name}"]
    return out


def _parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # noqa: BLE001 - Hydra's grammar errors: several lines, no key named
        bad = next((o for o in overrides if "=" not in o.lstrip("~")), None)
        if bad is not None:
            raise ConfigError(f"{bad!r} is not an override: write key=value (e.g. data.size=240)") from None
        raise ConfigError(f"cannot parse the overrides {' '.join(overrides)}: {_first_line(err)}") from None


def _compose(overrides: list[str], with_hydra: bool) -> DictConfig:
    try:
        return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)
    except Exception as err:  # noqa: BLE001 - composition and type errors: one line naming the override
        raise ConfigError(_composition_message(err, overrides)) from None


def _composition_message(err: Exception, overrides: list[str]) -> str:
    """One line from Hydra's chain of causes: OmegaConf's error names the key (`full_key`) and says what is wrong."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    omega = next((e for e in chain if getattr(e, "full_key", None)), None)
    if omega is None:
        return _first_line(err)
    key, text = omega.full_key, _first_line(omega)
    if "not in" in text:  # Key 'szie' not in 'DataConfig'
        close = difflib.get_close_matches(key, schema_keys(), n=1, cutoff=0.6)
        return f"{key} is not a config key" + (f": did you mean {close[0]}?" if close else "")
    culprit = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), key)
    return f"{culprit}: {text}"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


if __name__ == "__main__":  # launchers/sweep.sh checks a sweep here, where its user sees the answer, before submitting it
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        sys.exit(f"error: {err}")
