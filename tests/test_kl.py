import math

import pytest
import torch

from sft_knowledge.kl import kl_stats, topk_renormalised_kl


def test_hand_computed_example():
    # vocab 3, k=2. ft logits [2, 1, 0]: top-2 ids are 0, 1, so p = softmax([2, 1]) = [e, 1] / (e + 1).
    # base logits at those ids are [0, 1]: q = softmax([0, 1]) = [1, e] / (e + 1).
    # KL = p0 ln(p0/q0) + p1 ln(p1/q1) = e/(e+1) * 1 + 1/(e+1) * (-1) = (e - 1)/(e + 1) = tanh(1/2) = 0.4621171573
    ft = torch.tensor([[2.0, 1.0, 0.0]])
    base = torch.tensor([[0.0, 1.0, 5.0]])
    assert topk_renormalised_kl(ft, base, k=2).item() == pytest.approx(0.4621171573, abs=1e-6)
    assert math.tanh(0.5) == pytest.approx(0.4621171573, abs=1e-9)


def test_identical_logits_give_zero():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(topk_renormalised_kl(logits, logits.clone()), torch.zeros(5))


def test_invariant_to_a_constant_shift_of_base_logits():
    g = torch.Generator().manual_seed(1)
    ft, base = torch.randn(6, 30, generator=g), torch.randn(6, 30, generator=g)
    shift = torch.randn(6, 1, generator=g) * 10
    torch.testing.assert_close(topk_renormalised_kl(ft, base + shift, k=5), topk_renormalised_kl(ft, base, k=5))


def test_only_the_fine_tuned_top_k_ids_matter():
    g = torch.Generator().manual_seed(2)
    ft, base = torch.randn(4, 30, generator=g), torch.randn(4, 30, generator=g)
    outside = ft.topk(30, dim=-1).indices[:, 5:]  # ids outside ft's top-5
    changed = base.scatter(1, outside, 100.0)
    torch.testing.assert_close(topk_renormalised_kl(ft, changed, k=5), topk_renormalised_kl(ft, base, k=5))
    inside = ft.topk(1, dim=-1).indices
    assert (topk_renormalised_kl(ft, base.scatter(1, inside, 100.0), k=5) != topk_renormalised_kl(ft, base, k=5)).all()


def test_non_negative_and_shape_on_random_inputs():
    g = torch.Generator().manual_seed(3)
    ft, base = torch.randn(200, 100, generator=g) * 3, torch.randn(200, 100, generator=g) * 3
    kl = topk_renormalised_kl(ft.bfloat16(), base.bfloat16())
    assert kl.shape == (200,) and kl.dtype == torch.float32 and (kl >= 0).all() and (kl > 0).any()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="vocab"):
        topk_renormalised_kl(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="k=6"):
        topk_renormalised_kl(torch.zeros(2, 5), torch.zeros(2, 5), k=6)


def test_kl_stats_known_values():
    stats = kl_stats(torch.arange(11, dtype=torch.float32))  # 0, 1, ..., 10
    assert (stats.mean, stats.median, stats.max, stats.n) == (5.0, 5.0, 10.0, 11)
    assert stats.p90 == pytest.approx(9.0)
    assert len(stats.histogram) == 20 and sum(stats.histogram) == 11
    assert stats.bin_edges[0] == 0.0 and stats.bin_edges[-1] == 10.0 and len(stats.bin_edges) == 21
    # Bins are 0.5 wide: value i lands in bin 2i, and 10 in the last bin, which is closed on the right.
    assert stats.histogram == [1, 0] * 9 + [1, 1]


def test_kl_stats_empty_and_all_zero():
    assert kl_stats(torch.zeros(0)) is None
    stats = kl_stats(torch.zeros(4))
    assert stats.max == 0.0 and stats.histogram[0] == 4 and sum(stats.histogram) == 4
