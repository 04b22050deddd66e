"""LoRA through peft: only adapters train, merging folds them into q/v, and with the adapter disabled the model is the base."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft_knowledge.decoding import next_token_logits, qa_prompt
from sft_knowledge.config import TrainConfig
from sft_knowledge.train import attach_lora, merge_lora, sft
from test_train import FACTS, _job, _tok


def _model(tok):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id))


def test_lora_trains_adapters_only_and_merges_into_q_and_v():
    tok = _tok()
    model = _model(tok)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [qa_prompt(f.question) for f in FACTS[:4]]
    base_logits = next_token_logits(model, tok, prompts)
    cfg = TrainConfig(method="lora", epochs=4, lora_rank=4, lora_alpha=8.0)
    tuned = attach_lora(model, cfg)
    log = sft(tuned, tok, _job(cfg))
    assert sum(log.loss[-2:]) < sum(log.loss[:2])
    with tuned.disable_adapter():  # the KL base: the same model with its adapter disabled
        assert torch.allclose(next_token_logits(tuned, tok, prompts), base_logits, atol=1e-6)
    adapted = next_token_logits(tuned, tok, prompts)
    merged = merge_lora(tuned)
    assert torch.allclose(next_token_logits(merged, tok, prompts), adapted, atol=1e-4)
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])}
    assert changed == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qv"}


def test_gradient_accumulation_matches_the_whole_batch():
    tok = _tok()
    a, b = _model(tok), _model(tok)
    sft(a, tok, _job(TrainConfig(batch_size=8)))
    sft(b, tok, _job(TrainConfig(batch_size=8), micro_batch_size=2))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name


@pytest.mark.slow
def test_lora_end_to_end_restores_merged_weights(cli, smoke_cache, tmp_path):
    import json

    cli("train=lora", "train.lr=5e-3", output_dir=tmp_path, cache_dir=smoke_cache)
    [r] = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/results.json")]
    assert r["config"]["train"]["method"] == "lora" and r["cache_hits"]["probe"] is True
    assert [x["ratio"] for x in r["restore"]] == [0, 5, 20, 60]
    # Only the adapted matrices (q_proj, v_proj) changed: 12.5% of the region. Restoring 5% touches only them;
    # 20% holds every changed scalar (the rest of the 20% are unchanged ties, restored to what they already are).
    restored = {name.split(".")[-2] for name, n in r["restore"][1]["per_tensor"].items() if n}
    assert restored == {"q_proj", "v_proj"}
    assert r["update_share"]["20"] == 100.0
    assert r["kl_level"] == 4 and r["kl"]["mean"] > 0
