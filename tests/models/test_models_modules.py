"""Encoders, adapters, the projection head's grouped BatchNorm, optimiser groups and the LR schedule."""
import math

import pytest
import torch
from torch import nn

from infmask.models.adapters import ADAPTERS, FeaturesAdapter, PatchedAdapter, SimpleFeaturesAdapter, sincos_2d
from infmask.models.encoders import ENCODERS, build_encoder
from infmask.models.heads import ProjectionHead, grouped_batch_norm
from infmask.models.methods import parameter_groups, warmup_cosine_lr


@pytest.mark.parametrize("name,kwargs,x,shape", [
    ("alexnet", {}, torch.randn(2, 3, 224, 224), (2, 256, 6, 6)),
    ("alexnet", {}, torch.randn(2, 3, 128, 128), (2, 256, 3, 3)),
    ("alexnet", {"channels_last": True}, torch.randn(2, 3, 64, 64), (2, 256, 1, 1)),
    ("alexnet", {"width": 0.5}, torch.randn(2, 3, 128, 128), (2, 128, 3, 3)),
    ("resnet18", {}, torch.randn(2, 3, 128, 128), (2, 512, 4, 4)),
    ("convnet", {}, torch.randn(2, 3, 64, 64), (2, 128, 4, 4)),
    ("convnet", {"channels_last": True}, torch.randn(2, 3, 96, 96), (2, 128, 6, 6)),
    ("convnet", {"widths": [8, 16, 24], "norm": "none"}, torch.randn(2, 3, 64, 64), (2, 24, 8, 8)),
    ("affect_transformer", {"n_features": 20}, torch.randn(2, 50, 20), (2, 50, 40)),
    ("mlp", {"in_dim": 5, "hidden_dim": 10, "out_dim": 10}, torch.randn(2, 5), (2, 10)),
    ("gru", {"in_dim": 12, "hidden_dim": 32}, torch.randn(2, 24, 12), (2, 24, 32)),
    ("force", {"z": 128}, torch.randn(2, 32, 6), (2, 128)),
    ("proprio", {"z": 64}, torch.randn(2, 8), (2, 64)),
    ("identity", {}, torch.randn(2, 7, 4), (2, 7, 4)),
])
def test_encoder_shapes(name, kwargs, x, shape):
    enc = build_encoder(name, **kwargs)
    assert enc(x).shape == shape


def test_convnet_trunk_options_are_checked():
    enc = build_encoder("convnet", widths=[8, 16], norm="none")
    assert enc.out_dim == 16 and not any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_encoder("convnet").modules())
    for bad in ({"widths": []}, {"widths": [8, 0]}, {"widths": [8.5]}, {"norm": "ln"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_encoder("convnet", **bad)


def alex_params(m):
    return sum(p.numel() for p in m.parameters())


def test_encoder_parameter_counts_and_inits():
    alex = ENCODERS["alexnet"]()
    assert sum(p.numel() for p in alex.parameters()) == 2_469_696
    half = ENCODERS["alexnet"](width=0.5)
    assert half.out_dim == 128 and sum(p.numel() for p in half.parameters()) < alex_params(alex) / 3
    with pytest.raises(ValueError, match="width"):
        ENCODERS["alexnet"](width=0)
    res = ENCODERS["resnet18"]()
    assert sum(p.numel() for p in res.parameters()) == pytest.approx(11.18e6, rel=0.01)
    assert all(blk.bn2.weight.abs().sum() == 0 for layer in (res.layer1, res.layer4) for blk in layer)
    with pytest.raises(ValueError, match="encoder"):
        build_encoder("vgg")


def test_force_encoder_is_causal():
    enc = ENCODERS["force"](z=8)
    x = torch.randn(1, 32, 6)
    y = x.clone()
    y[:, -1] += 1.0            # the last time step may only influence the output, not earlier positions
    first = enc.frc_encoder[:2](x.transpose(1, 2))
    second = enc.frc_encoder[:2](y.transpose(1, 2))
    assert torch.equal(first[..., :-1], second[..., :-1])


def test_sincos_2d_matches_spec_formula():
    E, g = 16, 3
    table = sincos_2d(g, E)
    d = E // 4
    omega = [1 / 10000 ** (k / d) for k in range(d)]
    for r in range(g):
        for c in range(g):
            expect = [math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega] + \
                     [math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega]
            assert torch.allclose(table[r * g + c], torch.tensor(expect, dtype=torch.float32), atol=1e-6)


def test_patched_adapter_tokens_row_major_and_frozen_pos_emb():
    a = PatchedAdapter(num_channels=4, grid_size=2, dim_tokens=8)
    x = torch.randn(3, 4, 2, 2)
    out = a(x)
    assert out.shape == (3, 4, 8)
    tok = nn.functional.conv2d(x, a.proj.weight, a.proj.bias)
    assert torch.allclose(out[:, 1], tok[:, :, 0, 1] + a.pos_emb[1], atol=1e-6)     # (row 0, col 1)
    assert "pos_emb" not in dict(a.named_parameters())
    assert a(torch.randn(1, 4, 3, 3)).shape == (1, 9, 8)                            # resized table
    with pytest.raises(ValueError):
        a(torch.randn(1, 5, 2, 2))


def test_features_adapters():
    f = FeaturesAdapter(n_features=3, dim_tokens=4)
    x = torch.randn(2, 3)
    assert torch.allclose(f(x)[:, 1], x[:, 1:2] * f.weight[1] + f.bias[1])
    with pytest.raises(ValueError):
        f(torch.randn(2, 3, 1))
    s = SimpleFeaturesAdapter(dim_tokens=4)
    assert s(torch.randn(2, 4)).shape == (2, 1, 4)
    assert set(ADAPTERS) == {"patched", "features", "simple_features", "none"}


def test_grouped_batch_norm_equals_successive_calls():
    torch.manual_seed(0)
    head_a = ProjectionHead(6, 16, 5).double()
    head_b = ProjectionHead(6, 16, 5).double()
    head_b.load_state_dict(head_a.state_dict())
    x = torch.randn(4 * 7, 6, dtype=torch.float64, requires_grad=True)
    out_a = head_a(x, groups=4)
    out_b = torch.cat([head_b(c) for c in x.chunk(4)])
    assert torch.allclose(out_a, out_b, atol=1e-12)
    for k, v in head_a.state_dict().items():
        assert torch.allclose(v.double(), head_b.state_dict()[k].double(), atol=1e-12), k
    ga = torch.autograd.grad(out_a.pow(2).sum(), x)[0]
    gb = torch.autograd.grad(out_b.pow(2).sum(), x)[0]
    assert torch.allclose(ga, gb, atol=1e-10)
    head_a.eval()
    assert torch.allclose(head_a(x, groups=4), head_a(x), atol=1e-12)


def test_grouped_batch_norm_falls_back_for_sync_bn():
    bn = nn.SyncBatchNorm(3)
    x = torch.randn(8, 3)
    ref = nn.BatchNorm1d(3)
    expected = torch.cat([ref(c) for c in x.chunk(2)])
    # SyncBatchNorm needs a process group in training mode; without one the fallback path is what we test
    bn.train()
    try:
        out = grouped_batch_norm(bn, x, 2)
    except (ValueError, RuntimeError):
        pytest.skip("SyncBatchNorm cannot run without a process group in this torch build")
    assert torch.allclose(out, expected, atol=1e-6)


def test_parameter_groups_follow_spec():
    model = nn.Module()
    model.adapter = FeaturesAdapter(3, 4)
    model.head = ProjectionHead(4, 8, 2)
    model.ln_1 = nn.LayerNorm(4)
    model.frozen = nn.Linear(2, 2)
    model.frozen.weight.requires_grad_(False)
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
    groups = parameter_groups(model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    assert names == {"adapter.weight", "head.net.layer1.weight", "head.net.layer2.weight", "head.net.layer3.weight",
                     "cls_token"}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert all(p is not model.frozen.weight for g in groups for p in g["params"])


def test_warmup_cosine_schedule_matches_spec():
    lr = [warmup_cosine_lr(e, 1e-3, 10, 70, 1e-6, 1e-6) for e in range(70)]
    assert lr[0] == pytest.approx(1e-6)
    assert lr[9] == pytest.approx(1e-3) and lr[10] == pytest.approx(1e-3)
    assert lr[5] == pytest.approx(1e-6 + 5 * (1e-3 - 1e-6) / 9)
    assert lr[40] == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi * 30 / 60)))
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
