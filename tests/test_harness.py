"""lm-evaluation-harness on the shipped world model, offline: local task YAMLs built from the synthetic world's facts,
scored on the loaded model and on a copy saved as a Hugging Face directory, with answers known in advance."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

from sft_knowledge import harness
from sft_knowledge.config import SyntheticWorldConfig
from sft_knowledge.data.synthetic import build_world
from sft_knowledge.decoding import generate, qa_prompt
from sft_knowledge.errors import ConfigError
from sft_knowledge.harness import MISSING, HarnessConfig, check_harness, run_harness, scores
from sft_knowledge.models import load
from sft_knowledge.shipped import SHIPPED_DIR

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is not installed: pip install '.[harness]' (make install does)")
N_DOCS, MAX_GEN = 6, 16


@pytest.fixture(scope="module")
def tiny():
    return load(SHIPPED_DIR)


def _task(folder, name: str, docs: list[dict], bos: str) -> None:
    """A generate_until task over `docs`, read by the datasets `json` builder from a local file (no hub), asking the
    paper's QA prompt after BOS, as the project's own decoding does (decoding.encode_prompts)."""
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    config = {
        "task": name, "dataset_path": "json", "test_split": "test", "output_type": "generate_until",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "datasets")},
        "doc_to_text": bos + qa_prompt("{{question}}"), "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [bos], "max_gen_toks": MAX_GEN, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / f"{name}.yaml").write_text(json.dumps(config))  # YAML reads JSON


@pytest.fixture(scope="module")
def tasks(tiny, tmp_path_factory):
    """world_qa: its targets are the model's greedy answers (decoding.generate), so exact_match is 1. world_impossible:
    targets longer than MAX_GEN of the vocabulary's longest tokens, which no answer can equal: exact_match is 0."""
    model, tokenizer = tiny
    facts = build_world(SyntheticWorldConfig()).kb.splits["test"][:N_DOCS]
    answers = generate(model, tokenizer, [qa_prompt(f.question) for f in facts], MAX_GEN, batch_size=1)
    longest = max(len(tokenizer.decode([i])) for i in range(len(tokenizer)))
    folder = tmp_path_factory.mktemp("harness_tasks")
    _task(folder, "world_qa", [{"question": f.question, "answer": a} for f, a in zip(facts, answers)], tokenizer.bos_token)
    _task(folder, "world_impossible", [{"question": f.question, "answer": "Z" * (MAX_GEN * longest + 1)} for f in facts],
          tokenizer.bos_token)
    return str(folder)


KNOWN = {"world_qa": {"exact_match": 1.0, "exact_match_stderr": 0.0, "n_docs": N_DOCS},
         "world_impossible": {"exact_match": 0.0, "exact_match_stderr": 0.0, "n_docs": N_DOCS}}


@needs_lm_eval
def test_a_loaded_model_scores_the_known_answers(tiny, tasks):
    model, tokenizer = tiny
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = None  # as LLaMA-3's: the harness gives it one, on its own copy
    assert run_harness(model, tokenizer, HarnessConfig(tasks=list(KNOWN), include_path=tasks, batch_size=4)) == KNOWN
    assert tokenizer.pad_token is None and tokenizer.padding_side == "left"  # the run's tokenizer is left as it was


@needs_lm_eval
def test_a_saved_directory_scores_the_same_and_limit_caps_the_documents(tiny, tasks, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    got = run_harness(tmp_path, None, HarnessConfig(tasks=["world_qa"], include_path=tasks, limit=4))
    assert got == {"world_qa": {"exact_match": 1.0, "exact_match_stderr": 0.0, "n_docs": 4}}
    with pytest.raises(ValueError, match="tokenizer=None"):
        run_harness(tmp_path, tokenizer, HarnessConfig(tasks=["world_qa"], include_path=tasks))


@needs_lm_eval
def test_the_data_check_counts_documents_and_unreadable_data_is_one_line(tasks, tmp_path, capsys):
    harness.main(["world_qa", "world_impossible", "--include-path", tasks])
    assert capsys.readouterr().out.splitlines() == [f"world_qa: {N_DOCS} documents in the datasets cache",
                                                    f"world_impossible: {N_DOCS} documents in the datasets cache"]
    with pytest.raises(SystemExit, match="^error: eval.harness.include_path=/no/such is not a folder"):
        harness.main(["world_qa", "--include-path", "/no/such"])
    gone = {"include": str(Path(tasks) / "world_qa.yaml"), "task": "world_gone",
            "dataset_kwargs": {"data_files": {"test": str(tmp_path / "gone.jsonl")}}}
    (tmp_path / "world_gone.yaml").write_text(json.dumps(gone))
    with pytest.raises(ConfigError) as err:
        harness.check_data(HarnessConfig(tasks=["world_gone"], include_path=str(tmp_path)))
    assert str(err.value).startswith("eval.harness.tasks: the data of world_gone cannot be read (FileNotFoundError")
    assert "python -m sft_knowledge.harness world_gone" in str(err.value) and "\n" not in str(err.value)


@needs_lm_eval
def test_an_unknown_task_is_one_line_and_the_harness_own_are_known(tasks):
    check_harness(HarnessConfig(tasks=["world_qa", "gsm8k"], include_path=tasks))
    with pytest.raises(ConfigError) as err:
        check_harness(HarnessConfig(tasks=["world_qa", "no_such_task"], include_path=tasks))
    assert "no_such_task is not among lm-eval's tasks" in str(err.value) and "\n" not in str(err.value)


@needs_lm_eval
def test_the_project_xsum_task_runs_on_local_documents(tiny, tmp_path):
    """xsum_rouge.yaml as shipped (prompt, generation, ROUGE), its dataset swapped for two local XSum-shaped documents
    by a YAML that includes it. Their one-word summaries are longer than any 64 generated tokens: ROUGE 0."""
    longest = max(len(tiny[1].decode([i])) for i in range(len(tiny[1])))
    docs = tmp_path / "xsum.jsonl"
    docs.write_text("".join(json.dumps({"document": d, "summary": "z" * (64 * longest + 1)}) + "\n"
                            for d in ("The council met on Monday.", "Rain is expected in the north.")))
    local = {"include": str(harness.TASKS_DIR / "xsum_rouge.yaml"), "task": "xsum_local", "dataset_path": "json",
             "dataset_kwargs": {"data_files": {"test": str(docs)}, "cache_dir": str(tmp_path / "datasets")}}
    (tmp_path / "xsum_local.yaml").write_text(json.dumps(local))
    got = run_harness(*tiny, HarnessConfig(tasks=["xsum_local"], include_path=str(tmp_path)))
    assert got == {"xsum_local": {f"rouge{k}{s}": 0.0 for k in "12L" for s in ("", "_stderr")} | {"n_docs": 2}}


@needs_lm_eval
def test_the_project_xsum_task_is_indexed_without_the_harness_own_and_scores_rouge():
    assert harness.task_manager(HarnessConfig(tasks=["xsum_rouge"])) is harness._index((str(harness.TASKS_DIR),), False)
    spec = importlib.util.spec_from_file_location("xsum_rouge", harness.TASKS_DIR / "xsum_rouge.py")
    xsum = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(xsum)
    doc = {"summary": "The council has approved a new bridge over the river."}
    assert xsum.process_results(doc, [doc["summary"]]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert xsum.process_results(doc, ["Zebras sing quietly."]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # "bridge council" shares 2 of the reference's 10 unigrams and no bigram; its longest common subsequence is 1.
    half = xsum.process_results(doc, ["bridge council"])
    assert half["rouge1"] == pytest.approx(2 * (2 / 2) * (2 / 10) / (2 / 2 + 2 / 10)) and half["rouge2"] == 0.0
    assert half["rougeL"] == pytest.approx(2 * (1 / 2) * (1 / 10) / (1 / 2 + 1 / 10))


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("batch_size", None), ("limit", 0), ("num_fewshot", -1),
                                        ("include_path", "/no/such/folder")])
@needs_lm_eval
def test_bad_values_are_one_line(key, value):
    with pytest.raises(ConfigError, match=f"eval.harness.{key}=") as err:
        check_harness(HarnessConfig(tasks=["world_qa"], **{key: value}))
    assert "\n" not in str(err.value)


def test_without_lm_eval_the_option_is_one_line(monkeypatch, tiny):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a))
    check_harness(HarnessConfig())  # not asked for: nothing to check
    for call in (lambda: check_harness(HarnessConfig(tasks=["gsm8k"])),
                 lambda: run_harness(*tiny, HarnessConfig(tasks=["gsm8k"]))):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == MISSING == "eval.harness needs lm-eval: pip install '.[harness]'"


def test_scores_are_plain_floats_named_as_lm_eval_names_them():
    out = {"results": {"gsm8k": {"alias": "gsm8k", "sample_len": 1319,
                                 "exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.01,
                                 "exact_match,flexible-extract": 0.75, "exact_match_stderr,flexible-extract": "N/A"},
                       "local": {"alias": "local", "rougeL,none": 0.25, "rougeL_stderr,none": "N/A"}},
           "n-samples": {"gsm8k": {"original": 1319, "effective": 1319}, "local": {"original": 20, "effective": 8}}}
    assert scores(out) == {"gsm8k": {"exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.01,
                                     "exact_match,flexible-extract": 0.75, "n_docs": 1319},
                           "local": {"rougeL": 0.25, "n_docs": 8}}
    assert all(type(v) in (float, int) for row in scores(out).values() for v in row.values())


def _cell(model: str, data: str, harness_limit, runs: list[dict]):
    from types import SimpleNamespace

    from sft_knowledge.sweep import Cell, Job

    config = {"model": {"name": model}, "data": {"name": data}, "train": {"method": "full"},
              "restore": {"strategy": "top", "region": "transformer"}, "eval": {"harness": {"limit": harness_limit}}}
    return Cell("", "d2", 1920, [Job(i, str(i), None, None, SimpleNamespace(harness=h), [], config) for i, h in enumerate(runs)])


def test_table5_shows_ratios_by_bucket_with_the_paper_beside_llama3_8b_only():
    from sft_knowledge.report.paper import Paper
    from sft_knowledge.report.table5 import table5

    def run(tuned: float, restored: float) -> dict:
        score = lambda v: {"gsm8k": {"exact_match,strict-match": v, "exact_match_stderr,strict-match": 0.01, "n_docs": 1319}}
        return {"fine_tuned": score(tuned), "restored": {"10": score(restored)}}
    llama = _cell("Meta-Llama-3-8B", "entityquestions", None, [run(0.5, 0.55), run(0.6, 0.75)])
    section = table5([llama], Paper())
    body = [line for line in section.md if line.startswith("| 0") or line.startswith("| 10")]
    assert body == ["| 0 | 55.00 ± 7.07 (paper 57.69; Δ -2.69) |",
                    "| 10 | 65.00 ± 14.14, gain +10.00 (paper 59.60, gain +1.91; Δ +5.40) |"]
    assert [(r["task"], r["metric"], r["ratio"], r["paper"]) for r in section.rows] == [
        ("gsm8k", "exact_match,strict-match", 0, 57.69), ("gsm8k", "exact_match,strict-match", 10, 59.6)]
    for other in (_cell("tiny_world", "synthetic", None, [run(0.5, 0.55)]),
                  _cell("Meta-Llama-3-8B", "entityquestions", 100, [run(0.5, 0.55)])):  # not the paper's setting
        assert {r["paper"] for r in table5([other], Paper()).rows} == {""}
    assert "Not in this sweep" in table5([_cell("tiny_world", "synthetic", None, [{}])], Paper()).md[0]


@needs_lm_eval
@pytest.mark.slow
def test_a_run_scores_the_fine_tuned_and_every_exported_restored_model(cli, smoke_cache, tasks, tmp_path):
    """eval.harness.tasks with restore.export, end to end and offline: results.json's `harness` holds the fine-tuned
    model's scores and each exported ratio's; ratio 0 restores nothing, so its scores are the fine-tuned model's."""
    cli("eval.harness.tasks=[world_qa,world_impossible]", f"eval.harness.include_path={tasks}", "restore.export=[0,20]",
        output_dir=tmp_path, cache_dir=smoke_cache)
    result = json.loads(next(tmp_path.glob("runs/*/results.json")).read_text())
    scored = result["harness"]
    assert sorted(scored) == ["fine_tuned", "restored"] and sorted(scored["restored"]) == ["0", "20"]
    assert scored["restored"]["0"] == scored["fine_tuned"]
    for scores in (scored["fine_tuned"], scored["restored"]["20"]):
        assert scores["world_impossible"] == KNOWN["world_impossible"]
        assert scores["world_qa"]["n_docs"] == N_DOCS and 0 <= scores["world_qa"]["exact_match"] <= 1
    assert result["timings"]["harness"] > 0


@needs_lm_eval
def test_the_command_line_refuses_an_unknown_task_in_one_line_before_anything_runs(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sft_knowledge.run", "eval.harness.tasks=[no_such_task]",
                           f"paths.output_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: eval.harness.tasks: no_such_task is not among lm-eval's tasks nor the project's: `lm-eval ls tasks` lists "
        "lm-eval's; add your own with eval.harness.include_path=DIR"]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
