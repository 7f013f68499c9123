import pytest
import torch

from landmark.metrics import wilson_interval


def test_wilson_interval_covers_the_true_share_95_percent_of_the_time() -> None:
    gen = torch.Generator().manual_seed(0)
    for p, n in ((0.96, 536), (0.5, 40), (0.9, 157)):
        draws = torch.binomial(torch.full((4000,), float(n)), torch.full((4000,), p),
                               generator=gen)
        bounds = [wilson_interval(k / n, n) for k in draws.tolist()]
        coverage = sum(lo <= p <= hi for lo, hi in bounds) / len(bounds)
        assert 0.93 < coverage < 0.975, (p, n, coverage)


def test_wilson_interval_at_the_edges() -> None:
    assert wilson_interval(1.0, 20) == pytest.approx((20 / (20 + 1.96 ** 2), 1.0))
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 1.96 ** 2 / (10 + 1.96 ** 2)))
    assert wilson_interval(0.5, 0) == (0.0, 1.0)
