"""The default world's recipe at a tenth of its scale: every level of every split holds facts (issue 16).

The small world keeps what the recipe is (one epoch, the exposure distribution, bridge QA text, the out-of-domain
background facts, the model and its learning rate) and shrinks the fact counts tenfold and the batch fourfold. The
batch shrinks because a tenth of the corpus at the default batch is only 500 optimizer steps, too few for any
relation's recall to form (measured on a cheaper recipe: train 1,060 / 239 / 1 / 0 / 0); at a quarter of the batch it
trains 3,100 steps (1.6M tokens).

Measured on the AMD EPYC VM (2026-12-05), levels D-0..D-4 of 300 test and 300 test-ood facts: test 82 / 68 / 44 /
48 / 58, test-ood 70 / 87 / 45 / 55 / 43 (D-3 + D-4: 33% of test-ood, 35% of test). The recipe before issue 16 (no
background facts, pretraining lr 6e-3), scaled the same way, gave test 145 / 106 / 25 / 15 / 9 and test-ood 173 / 104 /
16 / 5 / 2 (2% against 8%): the second assertion fails on it.
"""
import pytest

from sft_knowledge.cache import Cache
from sft_knowledge.config import PretrainConfig, SyntheticWorldConfig
from sft_knowledge.recipe import load_base_model, load_data, mastery_levels

W = SyntheticWorldConfig()
SMALL_SCALE = {
    "data.world.n_train": W.n_train // 10,
    "data.world.n_test": W.n_test // 5,  # test splits a fifth, so that 1% of a split is still 3 facts
    "data.world.n_testood": W.n_testood // 5,
    "data.world.n_bridge_per_relation": W.n_bridge_per_relation // 10,
    "data.world.n_background_per_ood_relation": W.n_background_per_ood_relation // 10,
    "model.pretrain.batch_size": PretrainConfig().batch_size // 4,
}


@pytest.mark.slow
def test_default_recipe_at_small_scale_fills_every_level_of_every_split(compose, tmp_path):
    cfg = compose("experiment=toy_grid", f"paths.cache_dir={tmp_path}", *(f"{k}={v}" for k, v in SMALL_SCALE.items()))
    cache = Cache(tmp_path)
    data = load_data(cfg, cache)
    levels = mastery_levels(cfg, cache, data, load_base_model(cfg, cache, data)).levels
    counts = {split: levels.counts(split) for split in data.kb.splits}
    assert all(n > 0 for split in counts for n in counts[split]), counts
    well_known = {split: sum(c[3:]) / sum(c) for split, c in counts.items()}  # D-3 and D-4
    assert well_known["testood"] >= 0.5 * well_known["test"], counts  # out of domain mastered like in domain
