"""Model pieces: the dropout masks and the projection's use of precomputed ones."""
import math
import torch

from tvae.model import Projection, keep_mask


def test_keep_mask_has_the_dropout_rate_and_unit_mean():
    torch.manual_seed(0)
    mask = keep_mask((400, 1000), 0.1)
    scale = 65536 / (65536 - 6554)
    assert set(torch.unique(mask).tolist()) == {0.0, torch.tensor(scale, dtype=torch.float32).item()}
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - 6554 / 65536) < 0.002          # 400,000 draws: standard error 0.0005
    assert abs(mask.mean().item() - 1.0) < 0.003
    assert keep_mask((3, 5), 0.0).eq(1.0).all()


def test_keep_mask_keeps_exactly_the_16_bit_draws_at_or_above_the_threshold():
    """The definition in keep_mask's docstring, written with an integer compare, against its float arithmetic."""
    for p, shape in [(0.1, (37, 11)), (0.5, (5,)), (1e-6, (9, 3)), (0.9, (1000,))]:
        n, threshold = math.prod(shape), round(p * 65536)
        torch.manual_seed(3)
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)
        keep = bits.view(torch.int16)[:n].view(shape) >= threshold - 32768
        expected = keep.to(torch.float32) * (65536 / (65536 - threshold))
        torch.manual_seed(3)
        assert torch.equal(keep_mask(shape, p), expected)


def test_projection_uses_the_masks_it_is_given():
    torch.manual_seed(0)
    proj = Projection(16, 64, 2, 0.1, 0.95).train()
    z = torch.randn(8, 16)
    width = sum(proj.mask_widths)
    ones = proj.split_masks(torch.ones(8 * width), 8)
    assert [m.shape for m in ones] == [(8, 64), (8, 64), (8, 32), (8, 32)]
    assert torch.equal(proj(z, ones), proj.eval()(z))    # all-ones masks = no dropout
    proj.train()
    zeros = proj.split_masks(torch.zeros(8 * width), 8)
    assert not torch.allclose(proj(z, zeros), proj(z, ones))


def test_hand_written_geodesic_gradient_equals_autograd_of_the_formula():
    from tvae import losses

    torch.manual_seed(0)
    c = torch.tensor(1.0, dtype=torch.float64)
    for paths in [(2,), ()]:                       # A and B stacked, or B alone
        z = ((torch.rand(*paths, 64, 16, dtype=torch.float64) - 0.5) * 0.4).requires_grad_()
        pi = torch.randint(0, 64, (300,))
        pj = (pi + torch.randint(1, 64, (300,))) % 64
        target = torch.rand(300, dtype=torch.float64) * 3
        fast = losses.geodesic(z, target, pi, pj, c)
        reference = losses._geodesic_reference(z, target, pi, pj, c)
        assert torch.allclose(fast, reference, atol=1e-12)
        g_fast, = torch.autograd.grad(fast.sum(), z)
        g_ref, = torch.autograd.grad(reference.sum(), z)
        assert torch.allclose(g_fast, g_ref, atol=1e-12)
        assert torch.autograd.gradcheck(lambda zz: losses.geodesic(zz, target, pi, pj, c), (z,))
