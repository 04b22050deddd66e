import math
import zlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft_knowledge import restore
from sft_knowledge.recipe import weight_copy
from sft_knowledge.structure import model_structure
from sft_knowledge.restore import (
    REGIONS,
    SCOPES,
    STRATEGIES,
    relative_change,
    restore_into,
    restore_layers,
    restored_state,
    select_thresholds,
)

RATIOS = [0, 1, 3, 5, 10, 20, 40, 60, 100]


def tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2, vocab_size=50
    )
    return LlamaForCausalLM(config)


LLAMA = model_structure(tiny_llama())  # the regions of tiny_llama's state dicts (and of the hand-made ones below)
TRANSFORMER, MLP = LLAMA.region("transformer"), LLAMA.region("mlp")


def base_and_ft(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    base = {n: p.detach().clone().to(dtype) for n, p in tiny_llama().named_parameters()}
    # Scale the noise per tensor so changes span several orders of magnitude, as after real SFT.
    ft = {n: (b.float() + 10.0 ** -(i % 4) * torch.randn(b.shape, generator=g)).to(dtype) for i, (n, b) in enumerate(base.items())}
    return base, ft


def reference_scores(base, ft, region, strategy, seed, skip=()) -> tuple[list[str], torch.Tensor]:
    """The flattened concatenation of the region's scores: exactly what the streaming selection avoids building."""
    names = [n for n in base if n in region.names and n not in skip]
    parts = []
    for n in names:
        r = relative_change(ft[n], base[n]).flatten()
        if strategy == "random":
            r = torch.rand(r.numel(), generator=torch.Generator().manual_seed(seed + zlib.crc32(n.encode())))
        parts.append(-r if strategy == "bottom" else r)
    return names, torch.cat(parts)


def reference_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Everything above the k-th largest score, then the first scalars equal to it, in flat order."""
    if k == 0:
        return torch.zeros_like(flat, dtype=torch.bool)
    threshold = flat.sort(descending=True).values[k - 1]
    greater, eq = flat > threshold, flat == threshold
    return greater | (eq & (eq.cumsum(0) <= k - int(greater.sum())))


def scope_groups(names: list[str], scope: str) -> list[list[str]]:
    """The tensors that share one k%: all, each alone, or those of one decoder layer (others alone)."""
    if scope == "global":
        return [names]
    if scope == "per_tensor":
        return [[n] for n in names]
    by_layer: dict[str, list[str]] = {}
    for n in names:
        by_layer.setdefault(n.split("layers.")[1].split(".")[0] if "layers." in n else n, []).append(n)
    return list(by_layer.values())


def check_selection(base, ft, selections, region, strategy, seed=0, scope="global", skip=()):
    names, flat = reference_scores(base, ft, region, strategy, seed, skip)
    scores = dict(zip(names, flat.split([base[n].numel() for n in names])))
    for ratio, sel in selections.items():
        assert (sel.n_total, sel.scope) == (flat.numel(), scope)
        masks, k_total = {}, 0
        for group in scope_groups(names, scope):
            sub = torch.cat([scores[n] for n in group])
            k = round(ratio / 100 * sub.numel())
            k_total += k
            ref = reference_mask(sub, k)
            # The tie rule picks a set with the same scores as torch.topk, and the same set when the k-th score is unique.
            topk = sub.topk(k)
            assert torch.equal(sub[ref].sort().values, topk.values.sort().values)
            if k and int((sub == topk.values[-1]).sum()) == 1:
                assert torch.equal(ref, torch.zeros_like(ref).index_fill_(0, topk.indices, True))
            for n in group:
                assert math.isnan(sel.thresholds[n]) if k == 0 else sel.thresholds[n] == topk.values[-1].item()
            if scope == "global":
                assert math.isnan(sel.threshold) if k == 0 else sel.threshold == topk.values[-1].item()
            masks |= dict(zip(group, ref.split([base[n].numel() for n in group])))
        assert sel.k == k_total == sum(sel.per_tensor.values())
        assert sel.per_tensor == {n: int(m.sum()) for n, m in masks.items()}
        # Restoring must select the same scalars: visible wherever base and ft differ.
        restored = dict(restored_state(base, ft, sel, region, strategy, seed))
        assert restored.keys() == ft.keys()
        for n, m in masks.items():
            m = m.view(ft[n].shape)
            assert restored[n].dtype == ft[n].dtype
            assert torch.equal(restored[n][m], base[n][m]) and torch.equal(restored[n][~m], ft[n][~m])
            differs = base[n] != ft[n]
            assert torch.equal((restored[n] != ft[n]), m & differs)
        for n in ft.keys() - set(names) - set(skip):
            assert restored[n] is ft[n]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_selection_matches_global_topk(strategy):
    base, ft = base_and_ft()
    for region in REGIONS:
        selections = select_thresholds(base, ft, RATIOS, LLAMA.region(region), strategy=strategy, seed=7)
        check_selection(base, ft, selections, LLAMA.region(region), strategy, seed=7)
        assert all(s.passes == 2 for s in selections.values())  # a histogram pass and a bracket pass, for all ratios


@pytest.mark.parametrize("chunk", [None, 7])  # 7: ties and tensors cut into many chunks, counted across them
def test_heavy_ties_and_zero_changes(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(restore, "CHUNK", chunk)
    g = torch.Generator().manual_seed(2)
    sign = torch.randint(0, 2, (30, 10), generator=g) * 2 - 1.0
    base = {
        "model.layers.0.self_attn.q_proj.weight": torch.full((20, 20), 2.0),
        "model.layers.0.mlp.up_proj.weight": 4.0 * sign,
        "model.layers.1.mlp.down_proj.weight": torch.randn(10, 30, generator=g),
    }
    base["model.layers.1.mlp.down_proj.weight"].view(-1)[:10] = 0.0  # |base| = 0: relative changes of ~1e6
    ft = {n: b.clone() for n, b in base.items()}  # unchanged scalars: relative change exactly 0
    ft["model.layers.0.self_attn.q_proj.weight"].view(-1)[:200] = 3.0  # relative change exactly 0.5
    ft["model.layers.0.mlp.up_proj.weight"].view(-1)[::2] *= 1.5  # also exactly 0.5
    ft["model.layers.1.mlp.down_proj.weight"].view(-1)[:100] += 0.1 * torch.randn(100, generator=g)
    ratios = [0, 10, 25, 40, 50, 60, 75, 90, 100]
    for strategy in ("top", "bottom"):
        selections = select_thresholds(base, ft, ratios, TRANSFORMER, strategy=strategy)
        check_selection(base, ft, selections, TRANSFORMER, strategy)
        _, flat = reference_scores(base, ft, TRANSFORMER, strategy, 0)
        for sel in selections.values():
            if sel.k:
                assert sum(sel.ties_taken.values()) == sel.k - int((flat > sel.threshold).sum())
    assert select_thresholds(base, ft, [50], TRANSFORMER)[50].threshold == 0.0  # half of the 1000 scalars are unchanged


def test_ties_across_tensors_at_the_threshold(monkeypatch):
    """Equal scores in three tensors around the cut: the earlier tensors' ties go first, whole, then part of one."""
    monkeypatch.setattr(restore, "CHUNK", 16)
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    base = {n: torch.ones(10, 10) for n in names}
    ft = {n: torch.ones(10, 10) for n in names}
    for i, n in enumerate(names):
        ft[n].view(-1)[i::3] = 1.25  # relative change exactly 0.25: 34, 33, 33 ties, interleaved with zeros
        ft[n].view(-1)[99] = 3.0  # one clear winner per tensor (replaces a tie in the first)
    region = model_structure(tiny_llama(layers=3)).region("transformer")
    sel = select_thresholds(base, ft, [1, 2, 20, 34, 100 / 3, 100 * 67 / 300, 50, 100], region)
    check_selection(base, ft, sel, region, "top")
    assert [sel[20].ties_taken[n] for n in names] == [33, 24, 0]  # 33 ties of the first tensor, then 24 of the second
    assert sel[20].threshold == 0.25 and sel[1].threshold == 2.0 and sel[50].threshold == 0.0


def test_many_ratios_at_once_match_one_at_a_time():
    base, ft = base_and_ft(torch.bfloat16)
    ratios = [i / 4 for i in range(401)]
    together = select_thresholds(base, ft, ratios, LLAMA.region("all"))
    assert len(together) == 401 and all(s.passes == 2 for s in together.values())
    for ratio in (0, 0.25, 3, 33.5, 60, 99.75, 100):
        alone = select_thresholds(base, ft, [ratio], LLAMA.region("all"))[ratio]
        assert (alone.k, alone.per_tensor, alone.ties_taken) == (together[ratio].k, together[ratio].per_tensor, together[ratio].ties_taken)
    check_selection(base, ft, {r: together[r] for r in ratios[::40]}, LLAMA.region("all"), "top")
    # Top-k sets are nested: a larger ratio restores at least every scalar a smaller one does, tensor by tensor.
    for small, large in zip(ratios, ratios[1:]):
        assert all(together[small].per_tensor[n] <= together[large].per_tensor[n] for n in together[small].per_tensor)


@pytest.mark.parametrize("scope", ["per_tensor", "per_layer"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scopes_match_topk_per_group(scope, strategy, monkeypatch):
    monkeypatch.setattr(restore, "CHUNK", 64)
    base, ft = base_and_ft()
    for region in ("transformer", "all"):
        selections = select_thresholds(base, ft, RATIOS, LLAMA.region(region), strategy, seed=7, scope=scope)
        check_selection(base, ft, selections, LLAMA.region(region), strategy, seed=7, scope=scope)
        assert all(s.passes == 2 and math.isnan(s.threshold) for s in selections.values())
    sel = select_thresholds(base, ft, [10], LLAMA.region("all"), strategy, scope=scope)[10]
    # Every tensor (per_tensor) or every decoder layer (per_layer) gives up its own 10%, norms included.
    per_layer = [sum(v for n, v in sel.per_tensor.items() if f"layers.{i}." in n) for i in range(2)]
    layer_size = sum(t.numel() for n, t in base.items() if "layers.0." in n)
    if scope == "per_tensor":
        assert sel.per_tensor == {n: round(t.numel() / 10) for n, t in base.items()}
    else:
        assert per_layer == [round(layer_size / 10)] * 2 and sel.per_tensor["model.norm.weight"] == round(16 / 10)


def test_global_scope_is_the_default_and_unknown_scope_raises():
    base, ft = base_and_ft()
    default, explicit = select_thresholds(base, ft, [10], TRANSFORMER)[10], select_thresholds(base, ft, [10], TRANSFORMER, scope="global")[10]
    assert default == explicit and default.scope == "global"
    assert SCOPES == ("global", "per_tensor", "per_layer")
    with pytest.raises(ValueError, match="unknown scope 'per_row'"):
        select_thresholds(base, ft, [10], TRANSFORMER, scope="per_row")


def tied_pair() -> tuple[LlamaForCausalLM, dict, dict]:
    """A tiny LlamaForCausalLM with tied embeddings (as SmolLM2), its state dict and a fine-tuned one (shared storage)."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=50, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)

    def copy_keeping_ties() -> dict:  # state_dict() shares the tied storage; the copy keeps that
        clones: dict[int, torch.Tensor] = {}
        return {n: clones.setdefault(t.data_ptr(), t.detach().clone()) for n, t in model.state_dict().items()}

    base = copy_keeping_ties()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # the tied matrix is one parameter: changed once
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    ft = copy_keeping_ties()
    assert all(s["lm_head.weight"] is s["model.embed_tokens.weight"] for s in (base, ft))
    return model, base, ft


@pytest.mark.parametrize("copies", ["shared", "cloned_per_key"])
def test_tied_embeddings_counted_and_restored_once(copies):
    model, base, ft = tied_pair()
    if copies == "cloned_per_key":  # what recipe.weight_copy does: the sharing is lost, the values stay equal
        base, ft = ({n: t.clone() for n, t in state.items()} for state in (base, ft))
    ft_values = {n: t.clone() for n, t in ft.items()}
    emb = base["model.embed_tokens.weight"].numel()
    structure = model_structure(model)
    assert structure.tied == {"lm_head.weight": "model.embed_tokens.weight"} and structure.tied_embeddings
    for region in map(structure.region, ("embedding", "all")):
        sel = select_thresholds(base, ft, [0, 10, 100], region)
        assert "lm_head.weight" not in sel[10].per_tensor
        assert sel[10].n_total == sum(t.numel() for n, t in base.items() if n in region.names) - emb
        check_selection(base, ft, sel, region, "top", skip={"lm_head.weight"})
        restored = dict(restored_state(base, ft, sel[10], region, "top", 0))
        assert restored["lm_head.weight"] is restored["model.embed_tokens.weight"]  # still one tensor
        restore_into(model, base, ft, sel[10], region, "top", 0)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert torch.equal(model.lm_head.weight.detach(), restored["model.embed_tokens.weight"])
        changed = (model.model.embed_tokens.weight.detach() != ft_values["model.embed_tokens.weight"]).sum()
        assert 0 < changed <= sel[10].per_tensor["model.embed_tokens.weight"]
    assert all(torch.equal(ft[n], ft_values[n]) for n in ft)  # restoring wrote into the model, never into ft


def test_untied_embeddings_are_counted_separately_and_any_shared_parameter_once():
    base, ft = base_and_ft()  # tiny_llama does not tie: lm_head and embed_tokens differ
    assert not LLAMA.tied and not LLAMA.tied_embeddings
    sel = select_thresholds(base, ft, [10], LLAMA.region("embedding"))[10]
    assert set(sel.per_tensor) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert sel.n_total == 2 * base["lm_head.weight"].numel()
    model = tiny_llama()  # a model holding one of its projections under a second name, in another layer
    model.model.layers[1].mlp.shared_proj = model.model.layers[0].mlp.up_proj
    alias, source = "model.layers.1.mlp.shared_proj.weight", "model.layers.0.mlp.up_proj.weight"
    region = model_structure(model).region("transformer")
    assert region.tied == {alias: source} and alias in region.names
    tied_base, tied_ft = {**base, alias: base[source].clone()}, {**ft, alias: ft[source].clone()}  # copies, key by key
    tied = select_thresholds(tied_base, tied_ft, [10, 50], region)
    assert alias not in tied[10].per_tensor and tied[10].n_total == select_thresholds(base, ft, [10], TRANSFORMER)[10].n_total
    assert all(tied[r].per_tensor == s.per_tensor for r, s in select_thresholds(base, ft, [10, 50], TRANSFORMER).items())
    restored = dict(restored_state(tied_base, tied_ft, tied[50], region, "top", 0))
    assert restored[alias] is restored[source]


def test_bf16_weights():
    base, ft = base_and_ft(torch.bfloat16)
    assert (base["model.norm.weight"] == ft["model.norm.weight"]).any()  # bf16 rounding leaves some scalars unchanged
    for strategy in STRATEGIES:
        check_selection(base, ft, select_thresholds(base, ft, RATIOS, LLAMA.region("all"), strategy=strategy), LLAMA.region("all"), strategy)


def test_each_tensor_is_read_once_per_pass():
    class CountingDict(dict):
        reads = 0

        def __getitem__(self, name):
            CountingDict.reads += 1
            return super().__getitem__(name)

    base, ft = base_and_ft()
    n_region = sum(n in TRANSFORMER.names for n in ft)
    sel = select_thresholds(base, CountingDict(ft), RATIOS, TRANSFORMER)[10]
    assert sel.passes == 2 and CountingDict.reads == n_region * (sel.passes + 1)  # + 1: the shape check


def test_ratio_zero_and_hundred():
    base, ft = base_and_ft()
    sel = select_thresholds(base, ft, [0, 100], TRANSFORMER)
    assert sel[0].k == 0 and math.isnan(sel[0].threshold) and sum(sel[0].per_tensor.values()) == 0
    assert sel[100].k == sel[100].n_total == sum(sel[100].per_tensor.values())
    assert sel[100].change_share == pytest.approx(1.0)
    restored = dict(restored_state(base, ft, sel[100], TRANSFORMER, "top", 0))
    assert all(torch.equal(restored[n], base[n] if n in TRANSFORMER.names else ft[n]) for n in ft)


def test_change_share():
    base, ft = base_and_ft()
    sel = select_thresholds(base, ft, [10, 40], TRANSFORMER)
    _, flat = reference_scores(base, ft, TRANSFORMER, "top", 0)
    for ratio in (10, 40):
        top = flat.double().topk(sel[ratio].k).values
        assert sel[ratio].change_share == pytest.approx((top.sum() / flat.double().sum()).item(), rel=1e-6)
    bottom = select_thresholds(base, ft, [10], TRANSFORMER, strategy="bottom")[10]
    assert bottom.change_share == pytest.approx((-flat.double()).topk(bottom.k).values.neg().sum().item() / flat.double().sum().item(), rel=1e-6)
    assert bottom.change_share < sel[10].change_share


def test_random_is_deterministic_per_seed():
    base, ft = base_and_ft()
    a, b = (select_thresholds(base, ft, [20], TRANSFORMER, strategy="random", seed=3)[20] for _ in range(2))
    c = select_thresholds(base, ft, [20], TRANSFORMER, strategy="random", seed=4)[20]
    assert a.per_tensor == b.per_tensor and a.threshold == b.threshold and a.threshold != c.threshold


def test_restore_into_model_and_ratio_sweep():
    base, ft = base_and_ft()
    sel = select_thresholds(base, ft, [10, 40], TRANSFORMER)
    expected = dict(restored_state(base, ft, sel[10], TRANSFORMER, "top", 0))
    model = tiny_llama()
    restore_into(model, base, ft, sel[40], TRANSFORMER, "top", 0)
    restore_into(model, base, ft, sel[10], TRANSFORMER, "top", 0)  # must start from ft, not from the 40% state
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), expected[n])
    restored = sum(int((p.detach() == base[n]).sum()) for n, p in model.named_parameters())
    assert restored == sel[10].k  # every other scalar is ft, which differs from base everywhere here


@pytest.mark.parametrize("where", ["device", "cpu"])
def test_weight_copies_beside_the_model_or_in_node_memory_restore_the_same(where):
    """resources.weight_copies: on a GPU the `cpu` copies are restored across devices, into the model's own."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base, ft = base_and_ft()
    model = tiny_llama().to(device)
    model.load_state_dict(base)
    base_copy = weight_copy(model, where)
    model.load_state_dict(ft)  # the copy taken before must not follow the model
    ft_copy = weight_copy(model, where)
    assert {t.device.type for t in base_copy.values()} == {"cpu" if where == "cpu" else device}
    assert all(torch.equal(base_copy[n].cpu(), base[n]) and torch.equal(ft_copy[n].cpu(), ft[n]) for n in base)
    sel = select_thresholds(base_copy, ft_copy, [10], TRANSFORMER)
    restore_into(model, base_copy, ft_copy, sel[10], TRANSFORMER, "top", 0)
    expected = dict(restored_state(base, ft, select_thresholds(base, ft, [10], TRANSFORMER)[10], TRANSFORMER, "top", 0))
    for n, p in model.named_parameters():
        assert torch.equal(p.detach().cpu(), expected[n]), n


def test_restore_layers():
    base, ft = base_and_ft()
    model = tiny_llama()
    count = restore_layers(model, base, ft, {1}, TRANSFORMER)
    block = [n for n in base if "layers.1." in n and "norm" not in n]
    assert len(block) == 7 and count == sum(base[n].numel() for n in block)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), base[n] if n in block else ft[n])


def test_region_names_on_llama():
    names = [n for n, _ in tiny_llama().named_parameters()]
    projections = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"
    )}
    assert LLAMA.regions["transformer"] == projections
    assert LLAMA.regions["attention"] == {n for n in projections if "self_attn" in n}
    assert LLAMA.regions["mlp"] == {n for n in projections if ".mlp." in n}
    assert LLAMA.regions["embedding"] == {"model.embed_tokens.weight", "lm_head.weight"}
    assert LLAMA.regions["all"] == set(names)
    with pytest.raises(ValueError, match="unknown region 'ffn'"):
        LLAMA.region("ffn")


def test_bad_inputs_raise():
    base, ft = base_and_ft()
    with pytest.raises(ValueError, match="outside"):
        select_thresholds(base, ft, [101], TRANSFORMER)
    with pytest.raises(ValueError, match="strategy"):
        select_thresholds(base, ft, [1], TRANSFORMER, strategy="worst")
    missing = {n: t for n, t in ft.items() if n != "model.layers.0.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match="model.layers.0.mlp.up_proj.weight"):
        select_thresholds(base, missing, [1], TRANSFORMER)
    reshaped = {**ft, "model.layers.1.self_attn.q_proj.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match="model.layers.1.self_attn.q_proj.weight"):
        select_thresholds(base, reshaped, [1], TRANSFORMER)


def planted_zeros() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A tiny state dict with exact zeros planted in the base (-0.0 included), and SFT's change of each scalar."""
    up, q = "model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"
    base = {up: torch.tensor([[0.0, 0.5, -2.0, 1.0, 0.0, 4.0, 0.25, -0.0]]), q: torch.tensor([[1.0, 0.0], [2.0, 3.0]]),
            "model.embed_tokens.weight": torch.tensor([[0.0, 1.0, 0.0]]), "model.norm.weight": torch.tensor([0.0, 1.0])}
    change = {up: torch.tensor([[1e-3, 1e-3, 1e-3, 1e-3, 0.0, 1e-3, 1e-3, 2e-3]]), q: torch.full((2, 2), 1e-3),
              "model.embed_tokens.weight": torch.zeros(1, 3), "model.norm.weight": torch.zeros(2)}
    return base, {n: b + change[n] for n, b in base.items()}


def test_exact_zeros_are_counted_per_region():
    base, ft = planted_zeros()
    assert restore.exact_zeros(base, ft, LLAMA) == {
        "transformer": {"zeros": 4, "scalars": 12}, "attention": {"zeros": 1, "scalars": 4}, "mlp": {"zeros": 3, "scalars": 8},
        "embedding": {"zeros": 2, "scalars": 3}, "all": {"zeros": 7, "scalars": 17}}
    tied_base = base | {"lm_head.weight": base["model.embed_tokens.weight"]}  # tied: counted once
    tied = model_structure(tied_pair()[0])
    assert restore.exact_zeros(tied_base, ft | {"lm_head.weight": ft["model.embed_tokens.weight"]}, tied)["embedding"] == \
        {"zeros": 2, "scalars": 3}


def test_guarded_zeros_top_the_ranking_and_unranked_ones_do_not():
    """The mlp tensor's relative changes (change / |base|): 1e-3 / 0 at scalars 0 and 7 (2e-3 there), 2e-3, 5e-4, 1e-3,
    unchanged 0 at scalar 4, 2.5e-4, 4e-3. Guarded by 1e-8 the two moved zeros score 1e5 and 2e5: the top 25% (2 of 8)
    is them and holds nearly all the change; unranked, the top 2 are 4e-3 and 2e-3, 6/7.75 of the change."""
    base, ft = planted_zeros()
    up = "model.layers.0.mlp.up_proj.weight"

    def restored_positions(sel, strategy="top") -> list[int]:
        restored = dict(restored_state(base, ft, sel, MLP, strategy, 0))[up]
        return (restored != ft[up]).nonzero()[:, 1].tolist()

    guarded = select_thresholds(base, ft, [25], MLP)[25]
    assert restored_positions(guarded) == [0, 7] and guarded.change_share > 0.9999
    assert relative_change(ft[up], base[up])[0, 7] > 1e5 and relative_change(ft[up], base[up], eps=1e-4)[0, 7] < 1e2
    unranked = select_thresholds(base, ft, [25], MLP, zeros="unranked")[25]
    assert (unranked.eps, unranked.zeros) == (1e-8, "unranked")
    assert restored_positions(unranked) == [1, 6] and unranked.change_share == pytest.approx(6 / 7.75, rel=1e-3)
    exact = select_thresholds(base, ft, [25], MLP, eps=0.0, zeros="unranked")[25]  # no guard, and no nan at 0 / 0
    assert restored_positions(exact) == [1, 6] and exact.change_share == pytest.approx(6 / 7.75, rel=1e-3)
    assert relative_change(ft[up], base[up], 0.0, "unranked")[0, [0, 4, 7]].tolist() == [0.0, 0.0, 0.0]
    # bottom: unranked zeros count as unchanged, so the least changed are scalars 0 and 4 (flat order; 4 did not move)
    bottom = select_thresholds(base, ft, [25], MLP, "bottom", zeros="unranked")[25]
    assert bottom.per_tensor == {up: 2} and restored_positions(bottom, "bottom") == [0]
    assert restored_positions(select_thresholds(base, ft, [25], MLP, "bottom")[25], "bottom") == [5]  # 4, then 2.5e-4
    with pytest.raises(ValueError, match="unknown zeros rule 'skip'"):
        select_thresholds(base, ft, [25], MLP, zeros="skip")
