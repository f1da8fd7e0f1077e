"""Micro-batch planning: token budget, padding cap, every row exactly once."""

import numpy as np
import pytest

from l2v_core import padded_positions, padding_share, plan_micro_batches


def test_every_row_once_within_the_budget_and_the_padding_cap():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=500).tolist() + [400]
    groups = plan_micro_batches(lengths, batch_tokens=1024, max_padding=0.1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert len(g) * longest <= 1024 or len(g) == 1  # a text over the budget goes alone
        assert 1 - sum(lengths[i] for i in g) / (len(g) * longest) <= 0.1
    assert padding_share(lengths, groups) < 0.1
    assert padded_positions(lengths, groups) >= sum(lengths)


def test_the_cap_lowers_padding_compared_with_the_budget_alone():
    lengths = [5, 100, 7, 30, 30, 2, 64]
    capped = plan_micro_batches(lengths, 128)
    budget_only = plan_micro_batches(lengths, 128, max_padding=1.0)
    assert padding_share(lengths, capped) < padding_share(lengths, budget_only)
    assert padding_share(lengths, budget_only) < padding_share(lengths, [list(range(len(lengths)))])


@pytest.mark.parametrize("budget,cap", [(0, 0.1), (10, 1.5), (10, -0.1)])
def test_bad_settings_are_named(budget, cap):
    with pytest.raises(ValueError, match="batch_tokens" if budget < 1 else "max_padding"):
        plan_micro_batches([1, 2], budget, cap)
