"""Masked views and the fusion transformer: masking rules, and the fast path against the straightforward one."""
import pytest
import torch

from infmask.models.adapters import NoAdapter
from infmask.models.encoders import IdentityEncoder
from infmask.models.fusion import FusionTransformer, MultimodalEncoder, keep_count, random_keep_mask
from infmask.models.reference import reference_encoder_forward


# ----------------------------------------------------------------------------------------------------- masking
SPEC_K_TABLE = {  # L: (rho=0.5, 0.7, 0.8)
    1: (0, 0, 0), 10: (5, 3, 1), 16: (8, 4, 3), 24: (12, 7, 4), 36: (18, 10, 7), 50: (25, 15, 9), 128: (64, 38, 25),
}


@pytest.mark.parametrize("L", sorted(SPEC_K_TABLE))
def test_keep_count_truncate_reproduces_spec_table(L):
    assert tuple(keep_count(L, r, "truncate") for r in (0.5, 0.7, 0.8)) == SPEC_K_TABLE[L]


def test_keep_count_round_is_exact_rounding():
    assert keep_count(10, 0.8, "round") == 2
    assert keep_count(50, 0.8, "round") == 10
    assert keep_count(1, 0.5, "round") == 1      # halves round up
    assert keep_count(1, 0.7, "round") == 0
    assert keep_count(36, 0.7, "round") == 11    # 10.8
    assert keep_count(7, 0.0, "round") == 7


def test_keep_count_rejects_bad_input():
    with pytest.raises(ValueError, match="ratio"):
        keep_count(10, 1.0)
    with pytest.raises(ValueError, match="ratio"):
        keep_count(10, -0.1)
    with pytest.raises(ValueError, match="rounding"):
        keep_count(10, 0.5, "floor")


def test_random_keep_mask_keeps_exactly_k_per_sample_and_modality_and_differs():
    g = torch.Generator().manual_seed(0)
    lengths = [36, 10, 1]
    m = random_keep_mask(6, 32, lengths, 0.8, generator=g)
    assert m.shape == (6, 32, 47) and m.dtype == torch.bool
    blocks = m.split(lengths, dim=-1)
    for block, L in zip(blocks, lengths):
        assert (block.sum(-1) == keep_count(L, 0.8)).all()
    assert not blocks[2].any()                                 # single-token modality: always fully masked
    first = blocks[0]
    assert len({tuple(first[t, 0].tolist()) for t in range(6)}) > 1      # differ across views
    assert len({tuple(first[0, b].tolist()) for b in range(32)}) > 1     # differ across samples


@pytest.mark.parametrize("rho", [0.5, 0.7, 0.8])
def test_single_token_modalities_fully_masked_under_truncate(rho):
    m = random_keep_mask(4, 8, [1, 1, 16], rho)
    assert not m[..., :2].any()
    assert (m[..., 2:].sum(-1) == keep_count(16, rho)).all()


def test_mask_token_replaces_tokens_and_length_is_unchanged():
    torch.manual_seed(0)
    f = FusionTransformer(8, 1, 2)
    x = torch.randn(3, 5, 8)
    keep = random_keep_mask(2, 3, [5], 0.6)
    replaced = torch.where(keep.unsqueeze(-1), x.unsqueeze(0), f.mask_token)
    assert replaced.shape == (2, 3, 5, 8)
    assert torch.equal(replaced[keep], x.unsqueeze(0).expand(2, -1, -1, -1)[keep])
    assert torch.equal(replaced[~keep], f.mask_token.reshape(1, 8).expand(int((~keep).sum()), 8))
    assert f.mask_token.abs().max() <= 0.02


# --------------------------------------------------------------------------------------------- fast vs slow
def _compare(nl, lengths, rho, dtype, tol, padding=False, E=16, heads=4, B=5, T=3, seed=0):
    torch.manual_seed(seed)
    f = FusionTransformer(E, nl, heads).to(dtype)
    L = sum(lengths)
    x = torch.randn(B, L, E, dtype=dtype)
    pad = None
    if padding:
        pad = torch.rand(B, L) < 0.3
    offs = [0]
    for n in lengths:
        offs.append(offs[-1] + n)
    subsets = [list(range(offs[m], offs[m + 1])) for m in range(len(lengths))] + [None]
    masked = [(None, random_keep_mask(T, B, lengths, rho))]
    masked.append((subsets[0], random_keep_mask(T, B, lengths[:1], rho)))
    fast = f.fuse(x, pad, subsets, masked, fast=True)
    slow = f.fuse(x, pad, subsets, masked, fast=False)
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < tol


@pytest.mark.parametrize("nl", [1, 2])
@pytest.mark.parametrize("lengths,rho", [([6, 6], 0.7), ([4, 9, 1], 0.5), ([10, 24], 0.8), ([1, 1], 0.7),
                                         ([5, 3], 0.0), ([16], 0.8)])
def test_fast_fusion_equals_straightforward_float64(nl, lengths, rho):
    _compare(nl, lengths, rho, torch.float64, 1e-10)


@pytest.mark.parametrize("nl", [1, 2])
@pytest.mark.parametrize("lengths,rho", [([6, 6], 0.7), ([4, 9, 1], 0.5), ([10, 24], 0.8)])
def test_fast_fusion_equals_straightforward_float32(nl, lengths, rho):
    _compare(nl, lengths, rho, torch.float32, 1e-5)


@pytest.mark.parametrize("nl", [1, 2, 3])
def test_fast_fusion_honours_padding_like_straightforward(nl):
    _compare(nl, [7, 5], 0.5, torch.float64, 1e-10, padding=True, seed=nl)


def test_fast_fusion_gradients_match():
    torch.manual_seed(1)
    for nl in (1, 2):
        f = FusionTransformer(8, nl, 2).double()
        x = torch.randn(4, 9, 8, dtype=torch.float64, requires_grad=True)
        keep = random_keep_mask(3, 4, [4, 5], 0.6)

        def run(fast):
            z, zm = f.fuse(x, None, [list(range(4)), None], [(None, keep)], fast=fast)
            return sum((t ** 2).sum() for t in z + zm)

        params = [x] + list(f.parameters())
        ga = torch.autograd.grad(run(True), params)
        gb = torch.autograd.grad(run(False), params)
        for a, b in zip(ga, gb):
            assert torch.allclose(a, b, atol=1e-10)


def test_fusion_initialisation_follows_spec():
    torch.manual_seed(0)
    E, nl = 256, 2
    f = FusionTransformer(E, nl, 8)
    blk = f.resblocks[0]
    assert blk.attn.in_proj_weight.std().item() == pytest.approx(E ** -0.5, rel=0.05)
    assert blk.attn.out_proj.weight.std().item() == pytest.approx(E ** -0.5 * (2 * nl) ** -0.5, rel=0.05)
    assert blk.mlp.c_fc.weight.std().item() == pytest.approx((2 * E) ** -0.5, rel=0.05)
    assert blk.mlp.c_proj.weight.std().item() == pytest.approx(E ** -0.5 * (2 * nl) ** -0.5, rel=0.05)
    assert f.cls_token.std().item() == pytest.approx(1.0, rel=0.2)
    assert f.mask_token.abs().max().item() <= 0.02
    assert blk.attn.in_proj_bias.abs().max().item() == 0


# ------------------------------------------------------------------------------------------ multimodal encoder
def _encoder(lengths_E=16, n=2, **kw):
    encs = [IdentityEncoder() for _ in range(n)]
    adps = [NoAdapter(lengths_E) for _ in range(n)]
    return MultimodalEncoder(encs, adps, lengths_E, n_heads=4, **kw)


@pytest.mark.parametrize("n,nl,all_subsets", [(2, 1, False), (3, 2, True), (3, 1, False)])
def test_multimodal_encoder_equals_reference_loops(n, nl, all_subsets):
    torch.manual_seed(n + nl)
    enc = _encoder(n=n, n_layers=nl, mask_ratio=0.5, num_mask=3, mask_all_subsets=all_subsets).double()
    B, lengths = 4, [5, 3, 4][:n]
    x = [torch.randn(B, L, 16, dtype=torch.float64) for L in lengths]
    subsets = enc.subsets()
    masked_ids = range(len(subsets)) if all_subsets else [len(subsets) - 1]
    keep = {i: random_keep_mask(3, B, [lengths[m] for m in subsets[i]], 0.5) for i in masked_ids}
    out = enc.forward_copies([x], keep=[keep[i] for i in masked_ids])[0]
    ref_keep = [keep.get(i, random_keep_mask(3, B, [lengths[m] for m in subsets[i]], 0.5))
                for i in range(len(subsets))]
    z, masked = reference_encoder_forward(enc, x, keep=ref_keep)
    for a, b in zip(out.z, z):
        assert torch.allclose(a, b, atol=1e-10)
    for i in range(len(subsets)):
        if i in keep:
            assert torch.allclose(out.masked[i], torch.stack(masked[i]), atol=1e-10)
        else:
            assert out.masked[i] is None


def test_multimodal_encoder_copies_batched_equal_separate():
    torch.manual_seed(3)
    enc = _encoder(num_mask=2).double()
    x1 = [torch.randn(3, 4, 16, dtype=torch.float64), torch.randn(3, 2, 16, dtype=torch.float64)]
    x2 = [torch.randn(3, 4, 16, dtype=torch.float64), torch.randn(3, 2, 16, dtype=torch.float64)]
    both = enc.forward_copies([x1, x2], masked=False)
    for x, o in zip((x1, x2), both):
        single = enc(x, masked=False)
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(o.z, single.z))
    assert enc.embed(x1).shape == (3, 16)
    assert torch.allclose(enc.embed(x1), both[0].z[-1], atol=1e-12)
    out = enc(x1)
    assert out.masked[-1].shape == (2, 3, 16) and out.masked[0] is None


def test_padding_is_used_for_features_and_optional_in_training():
    class PaddedIdentity(torch.nn.Module):
        def forward(self, x):
            return x, x.abs().sum(-1) == 0           # zero rows are padding

    torch.manual_seed(4)
    enc = MultimodalEncoder([PaddedIdentity(), IdentityEncoder()], [NoAdapter(8), NoAdapter(8)], 8, n_heads=2,
                            mask_padding=False).double()
    a = torch.randn(2, 5, 8, dtype=torch.float64)
    b = torch.randn(2, 3, 8, dtype=torch.float64)
    a_padded = a.clone()
    a_padded[:, 3:] = 0
    a_trunc = a[:, :3]
    # features honour padding: padded positions do not change the embedding
    assert torch.allclose(enc.embed([a_padded, b]), enc.embed([a_trunc, b]), atol=1e-12)
    # training path: the reference ignores padding (mask_padding=False), ours honours it when asked
    z_ignore = enc([a_padded, b], masked=False).z[-1]
    assert not torch.allclose(z_ignore, enc.embed([a_trunc, b]), atol=1e-6)
    enc.mask_padding = True
    assert torch.allclose(enc([a_padded, b], masked=False).z[-1], enc.embed([a_trunc, b]), atol=1e-12)
