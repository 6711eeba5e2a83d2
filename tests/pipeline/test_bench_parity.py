"""The two formulations `infmask bench` compares compute the same training step.

fast = the method's own step (shared mask token, CLS-only last layer, batched views, masked views of the full set
only, closed-form loss); straightforward = models.reference.reference_step (the reference's loops,
every token through every layer, masked views for every subset, explicit covariance). Same weights and masks:
loss and gradients agree to 1e-10 in float64; in float32 the loss agrees to 1e-5 and the fast step's gradients are
at least as close to the float64 ones as the straightforward step's.
"""
import copy

import pytest
import torch

from infmask.bench.step import training_step
from infmask.models.fusion import random_keep_mask
from infmask.models.methods import build_method
from infmask.models.reference import STEP_PHASES, reference_step

from helpers.method_inputs import MOD_SEQ as SEQ, MOD_TAB as TAB

IMAGE = {"name": "image", "encoder": "alexnet", "encoder_kwargs": {}, "adapter": "patched",
         "adapter_kwargs": {"num_channels": 256, "grid_size": 3}}


def make_cfg(method, mods, **model):
    m = {"embed_dim": 16, "n_layers": 1, "n_heads": 4, "mask_ratio": 0.7, "num_mask": 3, "temperature": 0.1,
         "mask_lambda": 1.0, "head_hidden": 32, "head_out": 8, "channels_last": False, "modalities": mods}
    m.update(model)   # channels_last False: the float32 tolerances below were set on NCHW convolutions
    return {"benchmark": "test", "method": method, "preset": "smoke", "seed": 0, "model": m,
            "optim": {"lr": 1e-3, "weight_decay": 1e-4}}


def make_batch(mods, B, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"alexnet": (3, 128, 128), "mlp": (5,), "gru": (6, 3)}
    x = [torch.randn(B, *shapes[m["encoder"]], generator=g).to(dtype) for m in mods]
    views = [[t + 0.1 * torch.randn(t.shape, generator=g).to(dtype) for t in x] for _ in range(2)]
    return {"views": views, "x": x}


def _masks(method, B, lengths):
    """Keep masks for every subset, copy 1 then copy 2 on the row axis."""
    enc = method.encoder
    return [random_keep_mask(enc.num_mask, 2 * B, [lengths[m] for m in s], enc.mask_ratio) for s in enc.subsets()]


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _one(mods, B, dtype, formulation, keep, **model):
    """Loss and gradients of one formulation from the same initial weights, batch and keep masks."""
    torch.manual_seed(0)
    m = build_method(make_cfg("infmasking", mods, **model)).to(dtype)
    batch = make_batch(mods, B, dtype)
    if formulation == "fast":
        out = m.compute_loss(batch, keep=keep if m.encoder.mask_all_subsets else keep[-1:])
    else:
        out = reference_step(m, batch, keep1=[k[:, :B] for k in keep], keep2=[k[:, B:] for k in keep])
    out["loss"].backward()
    return m, out["loss"].item(), _grads(m)


def _keep(mods, B, **model):
    torch.manual_seed(0)
    m = build_method(make_cfg("infmasking", mods, **model))
    with torch.no_grad():
        lengths = m.encoder.tokenize([make_batch(mods, B, torch.float32)["views"][0]])[2]
    return _masks(m, B, lengths)


CASES = [([TAB, SEQ], 1, 4), ([TAB, SEQ], 2, 4), ([IMAGE, IMAGE], 1, 8)]


@pytest.mark.parametrize("mods,n_layers,B", CASES)
def test_fast_step_equals_straightforward_step_float64(mods, n_layers, B):
    keep = _keep(mods, B, n_layers=n_layers)
    _, la, ga = _one(mods, B, torch.float64, "fast", keep, n_layers=n_layers)
    _, lb, gb = _one(mods, B, torch.float64, "straightforward", keep, n_layers=n_layers)
    assert abs(la - lb) < 1e-10
    # the straightforward step also runs masked views of the unimodal subsets: their outputs never reach the
    # loss, so every gradient is the same (the mask token's included)
    assert set(ga) == set(gb)
    for name in ga:
        assert (ga[name] - gb[name]).abs().max().item() < 1e-10 * max(1.0, gb[name].abs().max().item()), name


@pytest.mark.parametrize("mods,n_layers,B", CASES)
def test_fast_step_float32_is_as_accurate_as_straightforward(mods, n_layers, B):
    """float32: the loss agrees to 1e-5 (relative); gradients are judged against float64, because float32 rounding
    of the step itself (BatchNorm over B rows, 1/tau^2 in the mask loss) moves the straightforward step's own
    gradients by up to ~1e-3 of their largest entry. The fast step's error must be no larger than the
    straightforward step's (x2, + 1e-6)."""
    keep = _keep(mods, B, n_layers=n_layers)
    _, l64, g64 = _one(mods, B, torch.float64, "fast", keep, n_layers=n_layers)
    _, la, ga = _one(mods, B, torch.float32, "fast", keep, n_layers=n_layers)
    _, lb, gb = _one(mods, B, torch.float32, "straightforward", keep, n_layers=n_layers)
    tol = 1e-5 if mods[0] is TAB else 3e-5      # AlexNet tokens: 9 per image, larger activations
    assert abs(la - lb) <= tol * abs(l64)
    assert abs(la - l64) <= 2 * abs(lb - l64) + 1e-5 * abs(l64)

    def err(g):
        return max((g[n].double() - g64[n]).abs().max().item() / max(1.0, g64[n].abs().max().item()) for n in g64)
    assert err(ga) <= 2 * err(gb) + 1e-6, (err(ga), err(gb))


def test_fast_step_with_every_subset_masked_keeps_head_statistics():
    """mask_all_subsets=True (reference BN parity): the head's running statistics match too."""
    keep = _keep([TAB, SEQ], 4, mask_all_subsets=True)
    fast, la, _ = _one([TAB, SEQ], 4, torch.float64, "fast", keep, mask_all_subsets=True)
    slow, lb, _ = _one([TAB, SEQ], 4, torch.float64, "straightforward", keep, mask_all_subsets=True)
    assert abs(la - lb) < 1e-10
    for (name, x), y in zip(fast.head.state_dict().items(), slow.head.state_dict().values()):
        assert torch.allclose(x.double(), y.double(), atol=1e-12), name


def _unmarked(method) -> bool:
    """The bench's phase marks are gone: the class's own methods again, no forward hook left."""
    return ("tokenize" not in vars(method.encoder) and "fuse" not in vars(method.encoder.fusion)
            and not method.head._forward_hooks)


def test_marked_training_step_is_the_real_one():
    """The bench marks the phases of the method's own training step from outside: same loss as the unmarked step
    (the same code, the same draws), the phases in order, and nothing left attached afterwards."""
    mods = [TAB, SEQ]
    for name in ("infmasking", "comm"):
        torch.manual_seed(0)
        m = build_method(make_cfg(name, mods)).double()
        batch = make_batch(mods, 4, torch.float64)
        torch.manual_seed(5)
        real = m.training_step(batch, 0).item()
        torch.manual_seed(5)
        marks = []
        marked = training_step(m, batch, marks.append).item()
        assert marked == real, name
        assert marks == ["encoders", "fusion", "head", "loss"], name
        assert _unmarked(m)
        marks = []
        reference_step(m, batch, marks.append)
        assert marks == list(STEP_PHASES)


def test_reference_step_of_comm_equals_its_fast_step():
    mods = [TAB, SEQ]
    torch.manual_seed(0)
    comm = build_method(make_cfg("comm", mods)).double()
    batch = make_batch(mods, 4, torch.float64)
    a = comm.compute_loss(batch)["loss"]
    b = reference_step(copy.deepcopy(comm), batch)["loss"]
    assert abs(a.item() - b.item()) < 1e-10


def test_phase_marks_reject_other_methods():
    cfg = make_cfg("cmc", [TAB, SEQ])
    cfg["model"]["cross_proj_dim"] = 8
    method, batch = build_method(cfg), make_batch([TAB, SEQ], 4, torch.float32)
    with pytest.raises(ValueError, match="method"):
        training_step(method, batch, lambda name: None)
    with pytest.raises(ValueError, match="method"):
        reference_step(method, batch)
    assert training_step(method, batch).ndim == 0      # unmarked, every method's step runs


def test_marks_are_removed_when_the_step_fails():
    torch.manual_seed(0)
    m = build_method(make_cfg("infmasking", [TAB, SEQ]))
    bad = make_batch([TAB, SEQ], 4, torch.float32)
    bad["views"][0] = bad["views"][0][:1]           # one modality short: the encoder's own check fails
    with pytest.raises(ValueError):
        training_step(m, bad, lambda name: None)
    assert _unmarked(m)


def test_losses_run_in_float32_under_bf16_autocast():
    """bf16-mixed (the GPU default) keeps loss parity: the losses upcast their inputs and switch autocast off, so
    on bf16 inputs they give float32 results equal to the float32 computation on the same values."""
    from infmask.models.losses import comm_loss, infmasking_loss

    g = torch.Generator().manual_seed(0)
    z1 = [torch.randn(16, 8, generator=g).bfloat16() for _ in range(3)]
    z2 = [torch.randn(16, 8, generator=g).bfloat16() for _ in range(3)]
    k1, k2 = torch.randn(4, 16, 8, generator=g).bfloat16(), torch.randn(4, 16, 8, generator=g).bfloat16()
    expect = infmasking_loss([z.float() for z in z1], [z.float() for z in z2], k1.float(), k2.float(), 0.1, 0.5)
    expect_comm = comm_loss([z.float() for z in z1], [z.float() for z in z2], 0.1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = infmasking_loss(z1, z2, k1, k2, 0.1, 0.5)
        got_comm = comm_loss(z1, z2, 0.1)
    assert got["loss"].dtype == torch.float32 and got_comm["loss"].dtype == torch.float32
    assert torch.equal(got["loss"], expect["loss"]) and torch.equal(got_comm["loss"], expect_comm["loss"])
