"""The Phase Learning Module's internals, as the paper's Section 2.2 / Fig. 4 describes them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from phaseedge.train.models import build_model
from phaseedge.train.models.plm import PhaseLearningModule


def _plm(c: int = 16, n: int = 3) -> PhaseLearningModule:
    torch.manual_seed(0)
    return PhaseLearningModule(c, n)


def test_parameter_count_is_table6_within_5_percent():
    plm = PhaseLearningModule(256, 3)
    total = sum(p.numel() for p in plm.parameters())
    assert abs(total / 1.2e6 - 1) <= 0.05, total
    assert sum(p.numel() for p in plm.re.parameters()) == 3 * 128 + 128 + 128 * 256 + 256  # Table 6: 0.0335M
    assert sum(p.numel() for p in plm.sa.parameters()) == 3 * (3 * 9 * 256 + 256)  # Table 6: 0.0215M


def test_zero_ratio_is_a_valid_input_and_gamma_path_keeps_features():
    plm = _plm()
    f = torch.randn(2, 16, 8, 8)
    out = plm(f, torch.zeros(2, 3))
    assert out.shape == f.shape and torch.isfinite(out).all()
    with torch.no_grad():
        plm.delta.zero_()
    torch.testing.assert_close(plm(f, torch.rand(2, 3)), plm.gamma * f)  # delta = 0: ratio has no say


def test_gates_lie_in_0_1_and_weigh_the_two_branches():
    plm = _plm()
    s, r = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    g = plm.fa.gate(s, r).detach()
    assert g.shape == s.shape and float(g.min()) > 0 and float(g.max()) < 1
    with torch.no_grad():  # gate forced open (g -> 1): only the spatial branch passes
        plm.fa.gate_conv.weight.zero_()
        plm.fa.gate_conv.bias.fill_(50.0)
    torch.testing.assert_close(plm.fa(s, r), plm.fa.out_conv(s))
    with torch.no_grad():  # gate closed: only the ratio branch
        plm.fa.gate_conv.bias.fill_(-50.0)
    torch.testing.assert_close(plm.fa(s, r), plm.fa.out_conv(r))


def test_every_part_receives_gradient():
    plm = _plm()
    f = torch.randn(2, 16, 8, 8, requires_grad=True)
    plm(f, torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])).square().mean().backward()
    for name, p in plm.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert {"gamma", "delta"} <= {n for n, _ in plm.named_parameters()}


def test_a_ratio_change_moves_the_output():
    plm = _plm()
    f = torch.randn(1, 16, 8, 8)
    a = plm(f, torch.tensor([[0.8, 0.1, 0.1]]))
    b = plm(f, torch.tensor([[0.1, 0.1, 0.8]]))
    assert float((a - b).abs().max()) > 1e-4


def test_coordinates_make_the_module_position_aware():
    plm = _plm()
    f = torch.ones(1, 16, 8, 8)  # a flat input: any spatial variation comes from CoordConv
    out = plm.spatial(f)
    assert float(out[..., 0, 0].sub(out[..., 7, 7]).abs().max()) > 1e-4


@pytest.mark.parametrize("plm_at, channels", [("bottleneck", 64), ("decoder", 4)])
def test_unet_places_the_plm(plm_at, channels):
    model = build_model("unet", 3, plm=True, tile=32, width=4, depth=4, plm_at=plm_at)
    assert model.plm.channels == channels and model.config["arch_kwargs"]["plm_at"] == plm_at
    x = torch.rand(2, 1, 32, 32)
    a = model(x, torch.tensor([[0.8, 0.1, 0.1]] * 2))
    b = model(x, torch.tensor([[0.1, 0.1, 0.8]] * 2))
    assert a.shape == (2, 3, 32, 32) and float((a - b).abs().max()) > 0
    with pytest.raises(ValueError, match="plm_at"):
        build_model("unet", 3, plm=True, tile=32, width=4, depth=4, plm_at="encoder")


def test_coordinates_do_not_depend_on_the_tile_size():
    from phaseedge.train.models.plm import coordinates

    like = torch.zeros(1)
    for s in (2, 7, 8, 128):
        x, y = coordinates(s, s, like, span=(s, s))  # the training size: CoordConv's linspace, exactly
        assert torch.equal(x[0], torch.linspace(-1, 1, s)) and torch.equal(y[:, 0], torch.linspace(-1, 1, s))
    x, _ = coordinates(8, 30, like, span=(8, 8))  # a bigger tile: each border as in training, 0 between
    ramp = torch.linspace(-1, 1, 8)
    assert torch.equal(x[0, :4], ramp[:4]) and torch.equal(x[0, -4:], ramp[-4:]) and not x[0, 4:-4].any()


def test_a_unet_takes_any_multiple_of_its_pooling_and_refuses_others():
    torch.manual_seed(0)
    model = build_model("unet", 3, plm=True, tile=32, width=4, depth=2).eval()
    r = torch.tensor([[0.5, 0.3, 0.2]])
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 44), r).shape == (1, 3, 64, 44)
        with pytest.raises(ValueError, match="multiples of 4"):
            model(torch.rand(1, 1, 30, 32), r)
    assert model.plm.span == (8, 8)  # the bottleneck of a 32-pixel training tile at depth 2
