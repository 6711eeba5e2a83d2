"""Batch augmentations: image views (kornia) and the sequence noise / drop of SPEC §3.0."""

import pytest
import torch

from data import augment as A

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MEAN = torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(A.IMAGENET_STD).view(1, 3, 1, 1)


def _images(b=8, h=40, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_ssl_views_shape_dtype_device_and_range(device, layout):
    x = _images().to(device)
    if layout == "nchw":
        x = x.permute(0, 3, 1, 2)
    aug = A.ImageSSLAugment(32)
    v1, v2 = aug(x), aug(x)
    for v in (v1, v2):
        assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32 and v.device.type == device
        assert torch.isfinite(v).all()
        # normalised pixels of [0, 1] images
        lo, hi = ((0 - MEAN) / STD).to(device), ((1 - MEAN) / STD).to(device)
        assert (v >= lo - 1e-4).all() and (v <= hi + 1e-4).all()
    assert not torch.allclose(v1, v2), "two views of the same batch must differ"
    assert not torch.allclose(v1[0], v1[1]), "samples draw their own parameters"


def test_ssl_augment_pipeline_is_the_spec_one():
    aug = A.ImageSSLAugment(224)
    names = [type(m).__name__ for m in aug.ops]
    assert names == ["RandomResizedCrop", "FastColorJitter", "RandomGrayscale", "RandomGaussianBlur",
                     "RandomHorizontalFlip"]
    cj = aug.ops[1]
    assert (cj.b, cj.c, cj.s, cj.h, cj.p) == (0.4, 0.4, 0.4, 0.1, 0.8)


def test_hsv_round_trip_and_kornia_agreement():
    import math

    import kornia.color as KC
    import kornia.enhance as KE

    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    hsv = A.rgb_to_hsv(x)
    assert torch.allclose(A.hsv_to_rgb(hsv), x, atol=1e-12)
    kh = KC.rgb_to_hsv(x)  # hue in radians
    dh = ((hsv[:, 0] * 2 * math.pi - kh[:, 0] + math.pi) % (2 * math.pi)) - math.pi
    assert dh.abs().max() < 1e-9 and torch.allclose(hsv[:, 1:], kh[:, 1:], atol=1e-6)
    # a hue shift of t turns equals kornia's adjust_hue by 2*pi*t radians
    t = 0.07
    shifted = A.hsv_to_rgb(torch.cat([((hsv[:, :1] + t) % 1.0), hsv[:, 1:]], 1))
    assert torch.allclose(shifted, KE.adjust_hue(x, torch.full((6,), 2 * math.pi * t, dtype=x.dtype)), atol=1e-5)


def test_fast_color_jitter_coin_and_range():
    torch.manual_seed(0)
    x = torch.rand(256, 3, 8, 8)
    y = A.FastColorJitter(p=0.8)(x)
    changed = (y - x).abs().amax((1, 2, 3)) > 0
    assert 0.7 < changed.float().mean() < 0.9 and y.min() >= 0 and y.max() <= 1
    assert torch.equal(A.FastColorJitter(p=0.0)(x), x)
    assert A.blur_kernel_size(224) == 23 and A.blur_kernel_size(32) == 3 and A.blur_kernel_size(64) % 2 == 1
    with pytest.raises(ValueError, match="scale"):
        A.ImageSSLAugment(32, scale=(0.5, 0.1))


def test_ssl_augment_keeps_the_content_of_a_flat_image_up_to_colour():
    # a single-colour image stays single-colour under crop / blur / flip: views are a function of the pixels
    x = torch.full((4, 32, 32, 3), 200, dtype=torch.uint8)
    v = A.ImageSSLAugment(32)(x)
    assert (v.amax((2, 3)) - v.amin((2, 3))).abs().max() < 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_probe_transform_is_deterministic_normalisation(device):
    x = _images(h=32, w=32).to(device)
    pt = A.ImageProbeTransform(32)
    y = pt(x)
    want = ((x.permute(0, 3, 1, 2).float() / 255) - MEAN.to(device)) / STD.to(device)
    assert torch.allclose(y, want, atol=1e-6)
    assert torch.equal(pt(x), y)
    assert A.ImageProbeTransform(16)(x).shape == (8, 3, 16, 16)
    rc = A.ImageProbeTransform(32, probe_random_crop=True)
    assert rc(x).shape == (8, 3, 32, 32) and not torch.allclose(rc(x), y)


def test_image_input_validation():
    with pytest.raises(ValueError, match="x"):
        A.ImageProbeTransform(8)(torch.zeros(2, 8, 8, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="x"):
        A.ImageProbeTransform(8)(torch.zeros(8, 8, 3, dtype=torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
def test_noise_per_sample_coin_and_scale(device):
    x = torch.zeros(4000, 50, device=device)
    y = A.noise(x, std=0.1)
    changed = (y != 0).any(1)
    assert 0.45 < changed.float().mean().item() < 0.55  # p = 0.5 per sample
    assert abs(y[changed].std().item() - 0.1) < 0.005
    assert (y[~changed] == 0).all()
    assert torch.equal(A.noise(x, p=0.0), x)
    coin = torch.zeros(4000, dtype=torch.bool, device=device)
    coin[:10] = True
    assert ((A.noise(x, coin=coin) != 0).any(1) == coin).all()  # a shared coin across modalities
    with pytest.raises(ValueError, match="x"):
        A.noise(torch.zeros(3, 4, dtype=torch.long))


@pytest.mark.parametrize("device", DEVICES)
def test_drop_zeroes_whole_rows_per_sample(device):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(2000, 20, 6, device=device, generator=g) + 1.0  # no natural zeros
    y = A.drop(x, max_frac=0.8)
    assert y.shape == x.shape and y.dtype == x.dtype
    zero_rows = (y == 0).all(-1)
    assert ((y == 0).any(-1) == zero_rows).all(), "rows are dropped whole"
    assert torch.equal(y[~zero_rows], x[~zero_rows])
    k = zero_rows.sum(1)
    assert k.max().item() <= round(0.8 * 20)
    dropped = k > 0
    # coin 0.5 times P(round(f*20) > 0) with f ~ U(0, 0.8): 1 - 0.5/16 of the coins
    assert 0.42 < dropped.float().mean().item() < 0.55
    assert k[dropped].float().mean().item() == pytest.approx(8.3, abs=0.6)  # mean of round(U(0,16)) given > 0
    assert len({tuple(r.tolist()) for r in zero_rows[dropped][:50]}) > 40  # rows differ per sample
    assert torch.equal(A.drop(x, p=0.0), x)
    full = A.drop(x, max_frac=1.0, p=1.0)
    assert (full == 0).all(-1).sum(1).float().mean().item() == pytest.approx(10, abs=0.6)
    with pytest.raises(ValueError, match="max_frac"):
        A.drop(x, max_frac=1.5)
