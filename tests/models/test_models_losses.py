"""Losses against slow, obvious formulations in float64 (values and gradients), plus input validation."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from infmask.models.losses import (clip_loss, cmc_loss, comm_loss, cross_self_loss, entropy_surrogate, gather_with_grad,
                           infmasking_loss, mask_loss, mask_ratio_schedule, nt_xent)
from infmask.models.reference import reference_infmasking_loss, reference_mask_loss

DT = torch.float64


# ------------------------------------------------------------------------------------------ slow oracles (loops)
def slow_nce(u, v, tau):
    """Row by row: 2B rows, each an explicit list of logits and -log softmax at its target."""
    u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    B = len(u)
    total = 0.0
    for b in range(B):
        logits = [u[b] @ v[j] / tau for j in range(B)] + [u[b] @ u[j] / tau for j in range(B) if j != b]
        total = total - (logits[b] - torch.logsumexp(torch.stack(logits), 0))
        logits = [v[b] @ v[j] / tau for j in range(B) if j != b] + [u[j] @ v[b] / tau for j in range(B)]
        total = total - (u[b] @ v[b] / tau - torch.logsumexp(torch.stack(logits), 0))
    acc = 100.0 * sum(int(torch.argmax(torch.stack([u[b] @ v[j] for j in range(B)])) == b) for b in range(B)) / B
    return total / (2 * B), acc


def slow_mask_loss(q, ks, tau, r):
    """Per sample: explicit mean and P x P covariance from outer products, explicit negative list."""
    q = F.normalize(q, dim=-1)
    ks = [F.normalize(k, dim=-1) for k in ks]
    B, T = len(q), len(ks)
    ce, quad_sum = 0.0, 0.0
    for b in range(B):
        mu = sum(k[b] for k in ks) / T
        sigma = sum(torch.outer(k[b] - mu, k[b] - mu) for k in ks) / T
        quad = q[b] @ sigma @ q[b]
        pos = q[b] @ mu + r / (2 * tau) * quad
        negs = [q[b] @ k[j] for k in ks for j in range(B) if j != b] + [q[b] @ q[j] for j in range(B) if j != b]
        logits = torch.stack([pos] + negs) / tau
        ce = ce - (logits[0] - torch.logsumexp(logits, 0))
        quad_sum = quad_sum + quad
    return ce / B + r / (2 * tau ** 2) * quad_sum / B


def slow_infmasking(z1, z2, k1, k2, tau, r, weights=None, cross=False):
    """Explicit loops over subsets and views."""
    terms = []
    a, b = (k2, k1) if cross else (k1, k2)
    terms.append(slow_mask_loss(z1[-1], [a[t] for t in range(len(a))], tau, r))
    terms.append(slow_mask_loss(z2[-1], [b[t] for t in range(len(b))], tau, r))
    accs = []
    for i in range(len(z1)):
        l1, a1 = slow_nce(z1[i], z2[-1], tau)
        l2, a2 = slow_nce(z2[i], z1[-1], tau)
        terms.append((l1 + l2) / 2)
        accs.append((a1 + a2) / 2)
    w = weights or [1.0] * len(terms)
    return sum(wi * t for wi, t in zip(w, terms)) / len(terms), terms, accs


def make_inputs(n, T, B, P, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    z1 = [torch.randn(B, P, generator=g, dtype=DT, requires_grad=grad) for _ in range(n + 1)]
    z2 = [torch.randn(B, P, generator=g, dtype=DT, requires_grad=grad) for _ in range(n + 1)]
    k1 = torch.randn(T, B, P, generator=g, dtype=DT, requires_grad=grad)
    k2 = torch.randn(T, B, P, generator=g, dtype=DT, requires_grad=grad)
    return z1, z2, k1, k2


def grads(value, inputs):
    return torch.autograd.grad(value, inputs, allow_unused=False)


# ------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("B,P", [(2, 3), (5, 8), (7, 4)])
def test_nt_xent_matches_row_by_row_oracle(B, P):
    g = torch.Generator().manual_seed(B * 10 + P)
    u = torch.randn(B, P, generator=g, dtype=DT, requires_grad=True)
    v = torch.randn(B, P, generator=g, dtype=DT, requires_grad=True)
    loss, acc = nt_xent(u, v, 0.2)
    ref, ref_acc = slow_nce(u, v, 0.2)
    assert abs(loss.item() - ref.item()) < 1e-10
    assert acc.item() == pytest.approx(ref_acc)
    for a, b in zip(grads(loss, [u, v]), grads(ref, [u, v])):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("B,P", [(2, 4), (5, 6)])
def test_mask_loss_closed_form_matches_oracles(T, B, P):
    g = torch.Generator().manual_seed(T * 100 + B)
    q = torch.randn(B, P, generator=g, dtype=DT, requires_grad=True)
    k = torch.randn(T, B, P, generator=g, dtype=DT, requires_grad=True)
    tau, r = 0.15, 0.7
    fast = mask_loss(q, k, tau, r)
    slow = slow_mask_loss(q, list(k.unbind(0)), tau, r)
    explicit = reference_mask_loss(F.normalize(q, dim=-1), list(F.normalize(k, dim=-1).unbind(0)), tau, r)
    assert abs(fast.item() - slow.item()) < 1e-8
    assert abs(fast.item() - explicit.item()) < 1e-8
    for a, b in zip(grads(fast, [q, k]), grads(slow, [q, k])):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


CASES = [  # n, T, B, P, weights, cross
    (2, 1, 2, 4, None, False),
    (2, 3, 4, 8, None, True),
    (2, 6, 3, 5, [1, 1, 1, 1, 5], False),
    (2, 8, 5, 4, [0.5, 2, 1, 1, 3], True),
    (3, 2, 4, 6, None, False),
    (3, 4, 3, 3, [1, 2, 1, 1, 1, 4], True),
    (3, 5, 6, 4, None, True),
    (3, 7, 2, 5, [2, 1, 1, 0.5, 1, 1], False),
]


@pytest.mark.parametrize("n,T,B,P,weights,cross", CASES)
def test_infmasking_loss_matches_loop_oracle_values_and_gradients(n, T, B, P, weights, cross):
    z1, z2, k1, k2 = make_inputs(n, T, B, P, seed=n * 1000 + T * 10 + B)
    tau, r = 0.1, 0.45
    out = infmasking_loss(z1, z2, k1, k2, tau, r, weights=weights, cross=cross)
    ref, terms, accs = slow_infmasking(z1, z2, k1, k2, tau, r, weights, cross)
    assert abs(out["loss"].item() - ref.item()) < 1e-6
    for i, t in enumerate(terms):
        assert abs(out[f"ssl_loss_{i}"].item() - t.item()) < 1e-6
    for i, a in enumerate(accs):
        assert out[f"ssl_acc_{i}"].item() == pytest.approx(a)
    assert out["ssl_acc"].item() == pytest.approx(sum(accs) / len(accs))
    assert set(out) == {"loss", "ssl_acc"} | {f"ssl_acc_{i}" for i in range(n + 1)} | \
        {f"ssl_loss_{i}" for i in range(n + 3)}
    inputs = z1 + z2 + [k1, k2]
    for a, b in zip(grads(out["loss"], inputs), grads(ref, inputs)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n,T,B,P,weights,cross", CASES[::2])
def test_infmasking_loss_matches_explicit_covariance_formulation(n, T, B, P, weights, cross):
    z1, z2, k1, k2 = make_inputs(n, T, B, P, seed=7 + n + T)
    out = infmasking_loss(z1, z2, k1, k2, 0.2, 1.3, weights=weights, cross=cross)
    ref = reference_infmasking_loss(z1, z2, list(k1), list(k2), 0.2, 1.3, weights=weights, cross=cross)
    inputs = z1 + z2 + [k1, k2]
    assert abs(out["loss"].item() - ref["loss"].item()) < 1e-8
    for a, b in zip(grads(out["loss"], inputs), grads(ref["loss"], inputs)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("only_mask_last", [False, True])
def test_entropy_penalty_matches_reference(only_mask_last):
    z1, z2, k1, k2 = make_inputs(2, 3, 6, 5, seed=3)
    out = infmasking_loss(z1, z2, k1, k2, 0.1, 0.5, penalty=0.3, only_mask_last=only_mask_last)
    ref = reference_infmasking_loss(z1, z2, list(k1), list(k2), 0.1, 0.5, penalty=0.3, only_mask_last=only_mask_last)
    base = infmasking_loss(z1, z2, k1, k2, 0.1, 0.5)
    assert abs(out["loss"].item() - ref["loss"].item()) < 1e-6
    assert abs(out["loss"].item() - base["loss"].item()) > 1e-6
    inputs = z1 + z2 + [k1, k2]
    for a, b in zip(grads(out["loss"], inputs), grads(ref["loss"], inputs)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_entropy_surrogate_gradient_is_minus_score_over_batch():
    keys = F.normalize(torch.randn(5, 4, dtype=DT), dim=-1).requires_grad_(True)
    h = entropy_surrogate(keys)
    (g,) = torch.autograd.grad(h, keys)
    from infmask.models.losses import _stein_score
    assert torch.allclose(g, -_stein_score(keys.detach()) / 5, atol=1e-12)


def test_comm_loss_matches_oracle():
    z1, z2, _, _ = make_inputs(3, 1, 4, 5, seed=11)
    out = comm_loss(z1, z2, 0.1, weights=[1, 2, 1, 3])
    terms = []
    for i in range(4):
        terms.append((slow_nce(z1[i], z2[-1], 0.1)[0] + slow_nce(z2[i], z1[-1], 0.1)[0]) / 2)
    ref = sum(w * t for w, t in zip([1, 2, 1, 3], terms)) / 4
    assert abs(out["loss"].item() - ref.item()) < 1e-10
    for a, b in zip(grads(out["loss"], z1 + z2), grads(ref, z1 + z2)):
        assert torch.allclose(a, b, atol=1e-8)


def test_cmc_loss_is_mean_over_pairs():
    g = torch.Generator().manual_seed(5)
    zs = [torch.randn(4, 3, generator=g, dtype=DT, requires_grad=True) for _ in range(3)]
    out = cmc_loss(zs, 0.1)
    ref = sum(slow_nce(zs[i], zs[j], 0.1)[0] for i, j in itertools.combinations(range(3), 2)) / 3
    assert abs(out["loss"].item() - ref.item()) < 1e-10
    assert {"ssl_loss_0_1", "ssl_loss_0_2", "ssl_loss_1_2"} <= set(out)


def test_cross_self_loss_two_modalities_matches_reference_formula():
    g = torch.Generator().manual_seed(6)
    x = [torch.randn(5, 4, generator=g, dtype=DT) for _ in range(2)]
    v1 = [torch.randn(5, 4, generator=g, dtype=DT) for _ in range(2)]
    v2 = [torch.randn(5, 4, generator=g, dtype=DT) for _ in range(2)]
    out = cross_self_loss(x, v1, v2, 0.1, ssl_scale=0.7)
    ref = slow_nce(x[0], x[1], 0.1)[0] + 0.7 * 0.5 * (slow_nce(v1[0], v2[0], 0.1)[0] + slow_nce(v1[1], v2[1], 0.1)[0])
    assert abs(out["loss"].item() - ref.item()) < 1e-10


def test_clip_loss_matches_loop_oracle():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(4, 3, generator=g, dtype=DT, requires_grad=True)
    b = torch.randn(4, 3, generator=g, dtype=DT, requires_grad=True)
    s = torch.tensor(1 / 0.07, dtype=DT)
    out = clip_loss(a, b, s)
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    ref = 0.0
    for i in range(4):
        ref = ref - torch.log_softmax(s * torch.stack([an[i] @ bn[j] for j in range(4)]), 0)[i] / 8
        ref = ref - torch.log_softmax(s * torch.stack([bn[i] @ an[j] for j in range(4)]), 0)[i] / 8
    assert abs(out["loss"].item() - ref.item()) < 1e-10
    for x, y in zip(grads(out["loss"], [a, b]), grads(ref, [a, b])):
        assert torch.allclose(x, y, atol=1e-10)


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


def test_mask_ratio_schedule():
    assert mask_ratio_schedule(1.0, 0, 100) == pytest.approx(0.01)
    assert mask_ratio_schedule(2.0, 99, 100) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="max_epochs"):
        mask_ratio_schedule(1.0, 0, 0)


def test_finite_for_one_view_and_batch_of_two():
    z1, z2, k1, k2 = make_inputs(2, 1, 2, 4, seed=1)
    out = infmasking_loss(z1, z2, k1, k2, 0.1, 1.0)
    assert torch.isfinite(out["loss"])
    g = grads(out["loss"], z1 + z2 + [k1, k2])
    assert all(torch.isfinite(x).all() for x in g)
    # with a single view the covariance is zero: the mask loss is plain InfoNCE against the one view
    assert abs(mask_loss(z1[-1], k1, 0.1, 1.0).item() - mask_loss(z1[-1], k1, 0.1, 0.0).item()) < 1e-12


def test_float32_and_identical_views_stay_finite():
    z1 = [torch.randn(2, 8) for _ in range(3)]
    k = z1[-1].unsqueeze(0).repeat(3, 1, 1)
    out = infmasking_loss(z1, z1, k, k, 0.05, 2.0)
    assert torch.isfinite(out["loss"])


def test_loss_decreases_over_20_steps():
    torch.manual_seed(0)
    B, P, T = 16, 8, 4
    z1, z2, k1, k2 = make_inputs(2, T, B, P, seed=2)
    params = z1 + z2 + [k1, k2]
    opt = torch.optim.SGD(params, lr=0.5)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = infmasking_loss(z1, z2, k1, k2, 0.1, 0.5)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert all(math.isfinite(x) for x in losses)


def test_golden_value():
    z1, z2, k1, k2 = make_inputs(2, 6, 8, 16, seed=1234, grad=False)
    out = infmasking_loss(z1, z2, k1, k2, 0.1, 0.5, weights=[1, 1, 1, 1, 5])
    assert out["loss"].item() == pytest.approx(GOLDEN_LOSS, abs=1e-9)
    assert out["ssl_loss_0"].item() == pytest.approx(GOLDEN_M1, abs=1e-9)


GOLDEN_LOSS = 10.299992941511338   # float64, seed 1234; the explicit-covariance formulation gives the same
GOLDEN_M1 = 6.71527617655911


# -------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors_naming_the_argument():
    z1, z2, k1, k2 = make_inputs(2, 3, 4, 5, grad=False)
    with pytest.raises(ValueError, match="temperature"):
        infmasking_loss(z1, z2, k1, k2, 0.0, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        infmasking_loss(z1, z2, k1, k2, -1.0, 0.5)
    with pytest.raises(ValueError, match="ratio"):
        infmasking_loss(z1, z2, k1, k2, 0.1, -0.1)
    with pytest.raises(ValueError, match="z2"):
        infmasking_loss(z1, z2[:2], k1, k2, 0.1, 0.5)
    with pytest.raises(ValueError, match="modalities"):
        infmasking_loss(z1[:1], z2[:1], k1, k2, 0.1, 0.5)
    with pytest.raises(ValueError, match="batch"):
        infmasking_loss(z1[:2] + [z1[2][:3]], z2, k1, k2, 0.1, 0.5)
    with pytest.raises(ValueError, match="k1"):
        infmasking_loss(z1, z2, k1[:, :3], k2, 0.1, 0.5)
    with pytest.raises(ValueError, match="k2"):
        infmasking_loss(z1, z2, k1, k2[:2], 0.1, 0.5)
    with pytest.raises(ValueError, match="weights"):
        infmasking_loss(z1, z2, k1, k2, 0.1, 0.5, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="v"):
        nt_xent(z1[0], z2[0][:3], 0.1)
    with pytest.raises(ValueError, match="temperature"):
        comm_loss(z1, z2, 0)
    with pytest.raises(ValueError, match="zs"):
        cmc_loss([z1[0]], 0.1)
