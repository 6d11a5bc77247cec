import math

import numpy as np
import pytest

from tvae import data, metrics


def test_spearman_hand_computed_with_ties():
    # x ranks: 1, 2.5, 2.5, 4 ; y ranks: 1, 2, 3, 4 -> Pearson of ranks
    x = np.array([1.0, 2.0, 2.0, 5.0], dtype=np.float32)
    y = np.array([0, 1, 2, 3])
    rx = np.array([1, 2.5, 2.5, 4.0]); ry = np.array([1, 2, 3, 4.0])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert metrics.spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert metrics.spearman_discrete(x, y, 4) == pytest.approx(expected, abs=1e-12)
    assert metrics.spearman(np.array([3.0, 2.0, 1.0]), np.array([1, 2, 3])) == pytest.approx(-1.0)


def test_spearman_discrete_matches_reference_on_random_data_with_ties():
    rng = np.random.default_rng(1)
    x = np.round(rng.random(5000), 2).astype(np.float32)   # many ties
    codes = rng.integers(0, 10, size=5000)
    assert metrics.spearman_discrete(x, codes, 10) == pytest.approx(metrics.spearman(x, codes), abs=1e-10)
    neg = (x - 0.5).astype(np.float32)                       # negative values keep their order
    assert metrics.spearman_discrete(neg, codes, 10) == pytest.approx(metrics.spearman(neg, codes), abs=1e-10)


def test_hierarchy_ceiling_for_distinct_radii_is_minus_0_83205():
    v = data.valuations().numpy()
    rng = np.random.default_rng(0)
    radius = (9 - v) + 0.5 * rng.random(len(v))          # perfectly ordered levels, distinct radii
    assert metrics.hierarchy(radius.astype(np.float32), v) == pytest.approx(-0.83205, abs=1e-5)
    tied = (9 - v).astype(np.float32)                     # zero within-level spread
    assert metrics.hierarchy(tied, v) == pytest.approx(-1.0)


def test_richness_is_mean_population_variance_over_levels_with_two_members():
    radius = np.array([1.0, 3.0, 2.0, 2.0, 4.0, 7.0], dtype=np.float32)
    v = np.array([0, 0, 1, 1, 2, 9])                      # level 9 has one member: skipped
    # var level0 = 1, level1 = 0, level2 has one member -> skipped
    assert metrics.richness(radius, v) == pytest.approx(0.5)


def test_dist_corr_and_q():
    v = np.array([0, 0, 1, 2, 3, 9])
    radius = np.array([3.0, 3.1, 2.0, 1.0, 0.5, 0.1], dtype=np.float32)
    sample = metrics.DistCorrSample(np.arange(6), v)
    iu, ju = np.triu_indices(6, 1)
    expected = metrics.spearman(np.abs(radius[iu] - radius[ju]), np.abs(v[iu] - v[ju]))
    assert sample(radius) == pytest.approx(expected, abs=1e-12)
    assert metrics.q_value(0.7, -0.8) == pytest.approx(0.7 + 1.5 * 0.8)


def test_padic_codes_order_and_effective_rank():
    assert metrics.padic_codes(np.array([0, 8])).tolist() == [9, 1]   # larger valuation, smaller distance
    m = np.diag([1.0, 1.0, 1.0, 0.0])
    assert metrics.effective_rank(m) == pytest.approx(3.0)
    assert metrics.effective_rank_from_gram(m.T @ m) == pytest.approx(3.0)


@pytest.mark.parametrize("decimals", [None, 4, 2, 0])   # no ties, a few, many, all values tied in few runs
def test_dist_corr_matches_reference_with_any_amount_of_ties(decimals):
    rng = np.random.default_rng(3)
    v = rng.integers(0, 10, 300)
    radius = rng.random(300)
    radius = (radius if decimals is None else np.round(radius, decimals)).astype(np.float32)
    iu, ju = np.triu_indices(300, 1)
    expected = metrics.spearman(np.abs(radius[iu] - radius[ju]), np.abs(v[iu] - v[ju]))
    got = metrics.DistCorrSample(np.arange(300), v)(radius)
    if decimals == 0:
        assert math.isnan(expected) == math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 4, 1])
def test_device_spearman_matches_the_numpy_one(decimals):
    import torch

    from tvae import metrics_torch

    rng = np.random.default_rng(5)
    x = rng.normal(size=5000)                       # negative and positive values
    x = (x if decimals is None else np.round(x, decimals)).astype(np.float32)
    codes = rng.integers(0, 10, 5000)
    expected = metrics.spearman(x, codes)
    got = metrics_torch.spearman_discrete(torch.from_numpy(x), torch.from_numpy(codes), 10)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert float(got) == pytest.approx(expected, abs=1e-12)
    assert float(got) == pytest.approx(metrics.spearman_discrete(x, codes, 10), abs=1e-12)
    x[7] = np.nan
    assert math.isnan(float(metrics_torch.spearman_discrete(torch.from_numpy(x), torch.from_numpy(codes), 10)))
    const = torch.ones(10)
    assert math.isnan(float(metrics_torch.spearman_discrete(const, torch.arange(10), 10)))


def test_batched_device_spearman_of_padded_rows_equals_each_row_alone():
    """Rows of different lengths padded into one batch (``valid``): each row's correlation is the one it has
    alone, ties and all; a row with a non-finite valid value or fewer than two valid entries gives NaN, and
    what stands in the padding does not count."""
    import torch

    from tvae import metrics_torch

    rng = np.random.default_rng(11)
    lengths = [500, 37, 1, 500, 260]
    x = np.round(rng.normal(size=(5, 500)), 2).astype(np.float32)        # ties
    codes = rng.integers(0, 10, size=(5, 500))
    x[4, 300] = np.nan                                                    # in the padding: ignored
    x[3, 17] = np.inf                                                     # valid: the row is NaN
    valid = np.arange(500) < np.array(lengths)[:, None]
    got = metrics_torch.spearman_discrete(torch.from_numpy(x), torch.from_numpy(codes), 10,
                                          valid=torch.from_numpy(valid))
    assert got.shape == (5,) and got.dtype == torch.float64
    for i, n in enumerate(lengths):
        alone = metrics_torch.spearman_discrete(torch.from_numpy(x[i, :n]), torch.from_numpy(codes[i, :n]), 10)
        if i in (2, 3):
            assert math.isnan(float(got[i])) and math.isnan(float(alone))
        else:
            assert float(got[i]) == pytest.approx(metrics.spearman_discrete(x[i, :n], codes[i, :n], 10), abs=1e-12)
            assert float(got[i]) == pytest.approx(float(alone), abs=1e-12)


def test_batched_level_moments_count_only_the_weighted_entries():
    import torch

    from tvae import metrics_torch

    rng = np.random.default_rng(3)
    r = torch.from_numpy(rng.random((3, 200)))
    levels = torch.from_numpy(rng.integers(0, 10, 200))
    keep = torch.from_numpy(rng.random((3, 200)) < 0.5)
    batched = metrics_torch.level_moments(r, levels, keep.double())
    for i in range(3):
        alone = metrics_torch.level_moments(r[i][keep[i]], levels[keep[i]])
        assert torch.allclose(batched[i], alone, rtol=1e-12, atol=1e-12)
        assert float(metrics_torch.richness(batched)[i]) == pytest.approx(float(metrics_torch.richness(alone)),
                                                                           rel=1e-12)
        assert float(metrics_torch.level_mean(batched, 9)[i]) == pytest.approx(
            float(metrics_torch.level_mean(alone, 9)), rel=1e-12, nan_ok=True)
