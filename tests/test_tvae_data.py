import torch

from tvae import data


def test_valuation_histogram_and_convention():
    v = data.valuations()
    assert torch.bincount(v, minlength=10).tolist() == [13122, 4374, 1458, 486, 162, 54, 18, 6, 2, 1]
    assert v[0] == 9 and v[6561] == 8 and v[13122] == 8 and v[1] == 0 and v[3] == 1 and v[18] == 2


def test_trits_encoding():
    t = data.all_trits()
    assert t.shape == (19683, 9)
    assert t[0].tolist() == [-1] * 9 and t[9841].tolist() == [0] * 9 and t[19682].tolist() == [1] * 9
    assert t[1].tolist() == [0] + [-1] * 8            # position 0 is the least significant digit
    # v(i) is the length of the leading run of -1 trits
    lead = torch.cumprod((t == -1).long(), 1).sum(1)
    assert torch.equal(lead, data.valuations())


def test_stratified_batches_follow_the_budget():
    sampler = data.StratifiedSampler(torch.arange(data.N_OPS), 512, 0.25, 4)
    assert sampler.draws_per_level.tolist() == [259, 86, 28, 9, 21, 21, 21, 21, 21, 21]
    batches = sampler.epoch_batches(torch.Generator().manual_seed(0))
    assert batches.shape == (39, 512)
    counts = torch.stack([torch.bincount(data.valuations(b), minlength=10) for b in batches])
    # 4 padding draws may land anywhere; every level gets at least its quota
    assert (counts >= sampler.draws_per_level).all()
    assert (counts.sum(1) == 512).all()
    assert (counts[:, 9] >= 21).all()                  # index 0 is drawn 21 times per batch


def test_heldout_split_is_stratified_seeded_and_disjoint():
    a = data.stratified_split(0.8, split_seed=3)
    b = data.stratified_split(0.8, split_seed=3)
    c = data.stratified_split(0.8, split_seed=4)
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert len(set(a.train.tolist()) & set(a.heldout.tolist())) == 0
    assert len(a.train) + len(a.heldout) == data.N_OPS
    v = data.valuations()
    tr = torch.bincount(v[a.train], minlength=10)
    assert tr.tolist() == [10498, 3499, 1166, 389, 130, 43, 14, 5, 2, 1]   # round(0.8 n), at least 1
    full = data.stratified_split(1.0, split_seed=0)
    assert len(full.heldout) == 0 and len(full.train) == data.N_OPS
