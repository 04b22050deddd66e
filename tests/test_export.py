"""restore.export: a restored model saved as a Hugging Face directory holds exactly the weights restoration put in the
model, loads back, keeps tied weights tied, and is published whole or not at all."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sft_knowledge import export
from sft_knowledge.export import TENSORS, export_path, export_restored
from sft_knowledge.pretrain import train_tokenizer
from sft_knowledge.restore import restore_into, select_thresholds
from sft_knowledge.structure import model_structure
from sft_knowledge.results import RestorePoint

DOCS = ["alice was born in paris", "bob works for acme", "the capital of france is paris"] * 5


def pair(tied: bool) -> tuple[LlamaForCausalLM, dict, dict]:
    """A tiny Llama holding its fine-tuned weights, with copies of its base and fine-tuned state (key by key, as
    recipe.weight_copy takes them)."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=300, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    base = {n: t.detach().clone() for n, t in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model, base, {n: t.detach().clone() for n, t in model.state_dict().items()}


def restored(tied: bool, region: str, ratio: float = 20):
    model, base, ft = pair(tied)
    region = model_structure(model).region(region)
    sel = select_thresholds(base, ft, [ratio], region)[ratio]
    restore_into(model, base, ft, sel, region, "top", 0)
    return model, sel


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCS, 300)


@pytest.mark.parametrize("tied, region", [(False, "transformer"), (True, "all")])
def test_the_saved_model_is_the_restored_one(tmp_path, tokenizer, tied, region):
    model, sel = restored(tied, region)
    dest = export_restored(model, tokenizer, sel.per_tensor, export_path(tmp_path, 20.0))
    assert dest == tmp_path / "restored-20"
    files = {}
    for shard in dest.glob("*.safetensors"):
        files |= load_file(shard)
    expected = dict(model.named_parameters())  # a tied parameter once, under its first name
    assert set(files) == set(expected)  # tied weights saved once, as save_pretrained does
    assert all(torch.equal(files[n], p.detach()) for n, p in expected.items())
    loaded = AutoModelForCausalLM.from_pretrained(dest).eval()
    if tied:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    for n, p in model.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[n].detach(), p.detach()), n
    ids = torch.tensor([tokenizer("alice was born in")["input_ids"]])
    with torch.no_grad():  # what accuracy is computed from: the same weights give the same logits
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    assert type(loaded.config).from_pretrained(dest).tie_word_embeddings == tied
    assert tokenizer.__class__.from_pretrained(dest)("bob works")["input_ids"] == tokenizer("bob works")["input_ids"]


def test_restored_tensors_table_counts_what_was_restored(tmp_path, tokenizer):
    model, sel = restored(True, "all")
    dest = export_restored(model, tokenizer, sel.per_tensor, tmp_path / "restored-20")
    rows = [line.split("\t") for line in (dest / TENSORS).read_text().splitlines()]
    assert rows[0] == ["tensor", "restored", "scalars"]
    table = {n: (int(r), int(s)) for n, r, s in rows[1:]}
    assert list(table) == [n for n, _ in model.named_parameters()] and "lm_head.weight" not in table  # tied: once
    assert sum(r for r, _ in table.values()) == sel.k
    assert all(table[n][0] == k for n, k in sel.per_tensor.items())
    assert all(s == p.numel() for (_, s), p in zip(table.values(), model.parameters()))


def test_large_models_are_sharded_and_load_back(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(export, "SHARD_SIZE", "20KB")
    model, sel = restored(True, "all")
    dest = export_restored(model, tokenizer, sel.per_tensor, tmp_path / "restored-20")
    assert len(list(dest.glob("*.safetensors"))) > 1
    assert (dest / "model.safetensors.index.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(dest)
    assert all(torch.equal(dict(loaded.named_parameters())[n].detach(), p.detach()) for n, p in model.named_parameters())


def test_a_failed_save_leaves_nothing_and_the_next_attempt_cleans_up(tmp_path, tokenizer, monkeypatch):
    model, sel = restored(False, "transformer")
    dest = tmp_path / "restored-20"

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # stands for the process dying mid-save

    monkeypatch.setattr(type(tokenizer), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        export_restored(model, tokenizer, sel.per_tensor, dest)
    assert list(tmp_path.iterdir()) == []  # neither the model nor its temporary directory
    monkeypatch.undo()
    stale = tmp_path / ".tmp-restored-20-deadbeef"  # what a SIGKILL mid-save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    export_restored(model, tokenizer, sel.per_tensor, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored-20"]


def test_a_published_export_is_kept_as_it_is(tmp_path, tokenizer):
    model, sel = restored(False, "transformer")
    dest = export_restored(model, tokenizer, sel.per_tensor, tmp_path / "restored-20")
    stamp = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # not written again: the same run key restores the same weights
    export_restored(model, tokenizer, sel.per_tensor, dest)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == stamp


def test_export_dir_is_recorded_and_old_results_load_without_it():
    acc = {"acc_test": 1.0, "acc_test_level": [1.0] * 5, "acc_testood": 2.0, "acc_testood_level": [2.0] * 5}
    point = {"ratio": 20, "strategy": "top", "region": "transformer", "scope": "global", "n_restored": 3, "n_region": 10,
             "change_share": 50.0, "per_tensor": {"a": 3}} | acc
    assert RestorePoint.from_json(point).export_dir is None  # written before restore.export existed
    saved = RestorePoint.from_json(point | {"export_dir": "/runs/x/restored-20"})
    assert saved.export_dir == "/runs/x/restored-20"
    assert json.loads(json.dumps(saved.to_json()))["export_dir"] == "/runs/x/restored-20"
    assert RestorePoint.from_json(saved.to_json()) == saved


@pytest.mark.slow
def test_a_run_saves_its_export_once_and_a_finished_run_says_what_it_lacks(cli, smoke_cache, tmp_path):
    cli("restore.export=[5]", output_dir=tmp_path, cache_dir=smoke_cache)
    [results] = (tmp_path / "runs").glob("*/results.json")
    points = {p["ratio"]: p for p in json.loads(results.read_text())["restore"]}
    dest = results.parent / "restored-5"
    assert points[5]["export_dir"] == str(dest.resolve())
    assert [r for r, p in points.items() if p["export_dir"]] == [5]
    rows = [line.split("\t") for line in (dest / TENSORS).read_text().splitlines()[1:]]
    assert sum(int(r) for _, r, _ in rows) == points[5]["n_restored"]
    AutoModelForCausalLM.from_pretrained(dest)
    stamp = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    again = cli("restore.export=[5]", output_dir=tmp_path, cache_dir=smoke_cache)
    assert "is already done" in again.stdout and {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == stamp
    missing = cli("restore.export=[20]", output_dir=tmp_path, cache_dir=smoke_cache, check=False)
    assert missing.returncode != 0 and "error: restore.export=20: run " in missing.stderr
    assert "finished without saving that restored model" in missing.stderr and "Traceback" not in missing.stderr
