"""Pre-screened probe subsets: the best-ranked facts and a spread over the rest; new config keys validated."""
import pytest

from conftest import compose_config
from sft_knowledge.config import ConfigError, validate
from sft_knowledge.prescreen import spread


def test_spread_keeps_the_best_half_and_spreads_the_rest():
    rates = [0.1, 0.9, 0.5, 0.0, 0.3, 0.2, 0.0, 0.05]
    # ranking: 1 (.9), 2 (.5), 4 (.3), 5 (.2), 0 (.1), 7 (.05), 3 (0), 6 (0)
    assert spread(rates, 4) == [1, 2, 4, 6]
    assert spread(rates, 5) == [1, 2, 4, 0, 6]
    assert sorted(spread(rates, 8)) == list(range(8)) and sorted(spread(rates, 20)) == list(range(8))


@pytest.mark.parametrize("override, message", [
    ("train.micro_batch_size=3", "train.micro_batch_size=3 is not allowed: expected a divisor of train.batch_size=8"),
    ("train.method=adapter", "train.method='adapter' is not allowed: expected full, lora"),
    ("data.subset.candidates=0", "data.subset.candidates=0 is not allowed"),
    ("model.dtype=int4", "model.dtype='int4' is not allowed: expected float32, bfloat16, float16"),
])
def test_new_keys_are_validated(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config("data=entityquestions", override))
    assert message in str(err.value)
