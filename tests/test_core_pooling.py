import pytest
import torch

from l2v_core import POOLING_MODES, pool


def _states():
    torch.manual_seed(0)
    return torch.randn(1, 4, 3)


def test_mean_and_weighted_mean_over_marked_tokens():
    h = _states()
    m = torch.tensor([[0, 1, 1, 1]])  # token 0 is an instruction token
    torch.testing.assert_close(pool(h, m, "mean")[0], h[0, 1:].mean(0))
    w = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(pool(h, m, "weighted_mean")[0], (h[0, 1:] * w[:, None]).sum(0) / w.sum())


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_does_not_depend_on_padding_side(mode):
    h = _states()
    real = h[:, :3]
    right = torch.cat([real, torch.full((1, 2, 3), 99.0)], 1)
    left = torch.cat([torch.full((1, 2, 3), 99.0), real], 1)
    m_right = torch.tensor([[1, 1, 1, 0, 0]])
    m_left = torch.tensor([[0, 0, 1, 1, 1]])
    torch.testing.assert_close(pool(right, m_right, mode), pool(left, m_left, mode))
    torch.testing.assert_close(pool(right, m_right, mode), pool(real, torch.ones(1, 3, dtype=torch.long), mode))


def test_first_and_last_token_use_the_attention_mask_when_given():
    h = _states()
    pool_mask = torch.tensor([[0, 1, 1, 0]])  # instruction at 0, padding at 3
    attention = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(pool(h, pool_mask, "first_token", attention)[0], h[0, 0])
    torch.testing.assert_close(pool(h, pool_mask, "last_token", attention)[0], h[0, 2])


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="mean, weighted_mean, last_token, first_token"):
        pool(_states(), torch.ones(1, 4), "max")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected hidden"):
        pool(_states(), torch.ones(1, 5), "mean")
