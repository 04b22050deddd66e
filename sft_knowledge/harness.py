"""General ability after fine-tuning and restoration (the paper's Table 5: GSM8K, XSum) through lm-evaluation-harness.

`run_harness` scores a model, loaded or saved as a Hugging Face directory (what `restore.export` writes), on
lm-eval tasks with the harness's own `simple_evaluate`, so the numbers are the ones the field reports. Tasks are the
harness's (~14,700, `lm-eval ls tasks`), the project's (TASKS_DIR: `xsum_rouge`, as the harness's `xsum` needs the
unitxt package) and the task YAMLs of `include_path` (its `--include_path`): a local task (`dataset_path: json` with
local `data_files`) runs offline. Table 5 is `tasks=[gsm8k, xsum_rouge]`. lm-eval is an optional extra (`pip install
'.[harness]'`); `check_harness` says in one line, before any stage runs, that it is missing or that a task name is
unknown; `check_data`, that a task's data cannot be read (offline, not in the datasets cache).
`python -m sft_knowledge.harness TASK...` downloads the tasks' datasets into the datasets cache on a machine with
network, for runs offline on the nodes (docs/harness.md).

Scores come back as plain floats, task -> metric -> value, named as lm-eval names them (`metric,filter`) without its
`none` filter: `exact_match` for a task with no filter, `exact_match,strict-match` for GSM8K's. The harness's
standard error stays beside each metric as `<metric>_stderr` (closed form for means; bootstrapped, BOOTSTRAP_ITERS
draws, for metrics such as BLEU): Table 5's differences between ratios are of the order of GSM8K's standard error
(about 1.4 points on its 1,319 problems at 58%), so they are read against it. `n_docs` is how many documents a task
was scored on (`limit` caps it).
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import numbers
import sys
from pathlib import Path
from typing import Any

from .config import HarnessConfig
from .errors import ConfigError
from .models import DTYPES, load

TASKS_DIR = Path(__file__).parent / "harness_tasks"  # the project's own tasks: xsum_rouge (Table 5's XSum)
MISSING = "eval.harness needs lm-eval: pip install '.[harness]'"
# lm-eval's default, 100,000 bootstrap draws, takes minutes per bootstrapped metric (BLEU, F1); means need none.
BOOTSTRAP_ITERS = 1000


def check_harness(cfg: HarnessConfig) -> None:
    """One line if the harness cannot run `cfg`: lm-eval missing, a bad value, an unknown task. Called before any
    stage runs; with tasks named from the harness's own, it indexes them (about 5 s, once per process)."""
    if not cfg.tasks:
        return
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(MISSING)
    for key, least, nullable in (("batch_size", 1, False), ("limit", 1, True), ("num_fewshot", 0, True)):
        value = getattr(cfg, key)
        if not ((nullable and value is None) or (type(value) is int and value >= least)):
            raise ConfigError(f"eval.harness.{key}={value!r} is not allowed: expected an integer >= {least}"
                              + (", or null" if nullable else ""))
    if cfg.include_path is not None and not Path(cfg.include_path).is_dir():
        raise ConfigError(f"eval.harness.include_path={cfg.include_path} is not a folder: point it at a folder of "
                          f"lm-eval task YAMLs")
    known = task_manager(cfg).all_tasks
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        where = f", the project's nor {cfg.include_path}'s" if cfg.include_path else " nor the project's"
        raise ConfigError(f"eval.harness.tasks: {', '.join(unknown)} is not among lm-eval's tasks{where}: "
                          f"`lm-eval ls tasks` lists lm-eval's; add your own with eval.harness.include_path=DIR")


def task_manager(cfg: HarnessConfig):
    """lm-eval's index of the tasks `cfg` may name: TASKS_DIR's and include_path's alone when they hold them all
    (indexing the harness's own takes about 5 s), else the harness's too (include_path wins a name clash, as in lm-eval)."""
    folders = (str(TASKS_DIR),) + ((str(Path(cfg.include_path).resolve()),) if cfg.include_path else ())
    if set(cfg.tasks) <= set(_index(folders, False).all_tasks):
        return _index(folders, False)
    return _index(folders, True)


@functools.cache
def _index(folders: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders), include_defaults=defaults)


def saved_dtype(model_dir: str | Path) -> str:
    """The dtype a saved model was written in (its config.json), so that it is scored in the weights it holds."""
    dtype = json.loads((Path(model_dir) / "config.json").read_text()).get("dtype")
    return dtype if dtype in DTYPES else "float32"


def run_harness(model: Any, tokenizer: Any, cfg: HarnessConfig, spread: bool = False) -> dict[str, dict[str, float]]:
    """Scores of `model` on cfg.tasks: task -> metric -> value. `model` is a loaded causal LM with its `tokenizer`,
    or the path of a saved Hugging Face directory (tokenizer None: the directory's own), loaded as models.load does
    (`spread`: over every visible GPU, for a model that needs several, model.n_gpus > 1)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(MISSING)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, Path)):
        if tokenizer is not None:
            raise ValueError("a saved model is scored with the tokenizer saved beside it: pass tokenizer=None")
        model, tokenizer = load(model, saved_dtype(model), spread=spread)
    # A copy: the harness gives a tokenizer without a pad token one, which the run would otherwise save with its models.
    lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=cfg.batch_size)
    # simple_evaluate seeds Python's, NumPy's and torch's global generators (0, 1234, 1234) for its few-shot draws
    out = simple_evaluate(model=lm, tasks=list(cfg.tasks), task_manager=task_manager(cfg), num_fewshot=cfg.num_fewshot,
                          limit=cfg.limit, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)
    return scores(out)


def scores(out: dict) -> dict[str, dict[str, float]]:
    """simple_evaluate's results as task -> metric -> float (module docstring): its `alias` and the like dropped, and a
    standard error it did not compute ("N/A")."""
    table = {}
    for task, results in out["results"].items():
        row: dict[str, float] = {}
        for key, value in results.items():
            if "," in key and isinstance(value, numbers.Real):
                metric, filter_name = key.split(",", 1)
                row[metric if filter_name == "none" else key] = float(value)
        if task in out.get("n-samples", {}):
            row["n_docs"] = out["n-samples"][task]["effective"]
        table[task] = row
    return table


def check_data(cfg: HarnessConfig) -> dict[str, int]:
    """Build cfg.tasks as a run does, reading their datasets (from the datasets cache when offline; with network,
    downloading them into it): one line for a task whose data cannot be read, so that a run learns it before its
    stages rather than after them. Returns the documents each task has (before `limit`)."""
    check_harness(cfg)
    try:
        built = task_manager(cfg).load(list(cfg.tasks))["tasks"]
    except Exception as err:  # datasets raises many kinds: offline without a cached copy, a missing file, a bad config
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(f"eval.harness.tasks: the data of {', '.join(cfg.tasks)} cannot be read ({type(err).__name__}: "
                          f"{first}); offline, download it first on a machine with network: python -m "
                          f"sft_knowledge.harness {' '.join(cfg.tasks)} (docs/harness.md)") from err
    return {name: len(task.eval_docs) for name, task in built.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sft_knowledge.harness",
                                     description="Download the datasets of lm-eval tasks for eval.harness runs offline.")
    parser.add_argument("tasks", nargs="+", help="task names, as eval.harness.tasks (Table 5: gsm8k xsum_rouge)")
    parser.add_argument("--include-path", help="a folder of task YAMLs, as eval.harness.include_path")
    args = parser.parse_args(argv)
    try:
        ready = check_data(HarnessConfig(tasks=args.tasks, include_path=args.include_path))
    except ConfigError as err:
        sys.exit(f"error: {err}")
    for name, n_docs in ready.items():
        print(f"{name}: {n_docs} documents in the datasets cache")


if __name__ == "__main__":
    main()
