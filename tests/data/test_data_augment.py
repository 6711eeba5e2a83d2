"""Batch augmentations: image views (kornia) and the sequence noise / drop of the reference."""

import pytest
import torch

from infmask.data import augment as A

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
    aug = A.ImageSSLAugment(224, impl="kornia")
    names = [type(m).__name__ for m in aug.ops]
    assert names == ["RandomResizedCrop", "FastColorJitter", "RandomGrayscale", "RandomGaussianBlur",
                     "RandomHorizontalFlip"]
    fast = A.ImageSSLAugment(224)
    assert [type(m).__name__ for m in fast.ops] == ["FastRandomResizedCropFlip", "FastColorJitter", "FastGrayscale",
                                                    "FastGaussianBlur"]
    crop, cj, gray, blur = fast.ops
    assert (crop.scale, crop.flip_p, gray.p, blur.k, blur.sigma, blur.p) == ((0.08, 1.0), 0.5, 0.2, 23, (0.1, 2.0), 0.5)
    for cj in (aug.ops[1], fast.ops[1]):
        assert (cj.b, cj.c, cj.s, cj.h, cj.p) == (0.4, 0.4, 0.4, 0.1, 0.8)
    with pytest.raises(ValueError, match="impl"):
        A.ImageSSLAugment(32, impl="pil")


def test_crop_resample_is_slice_then_bilinear_resize():
    x = torch.rand(3, 3, 40, 48, dtype=torch.float64)
    crop = A.FastRandomResizedCropFlip(16)
    no = torch.zeros(3, dtype=torch.bool)
    boxes = torch.tensor([[4.0, 6.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0], [24.0, 32.0, 16.0, 16.0]])
    # a box of the output size samples pixel centres exactly: the slice itself
    got = crop.resample(x, boxes, no)
    for b, (t, l, h, w) in enumerate(boxes.long().tolist()):
        assert torch.allclose(got[b], x[b, :, t:t + h, l:l + w], atol=1e-12)
    # the whole image: F.interpolate(bilinear, align_corners=False); the flip mirrors columns
    full = torch.tensor([[0.0, 0.0, 40.0, 48.0]]).repeat(3, 1)
    want = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(crop.resample(x, full, no), want, atol=1e-12)
    yes = torch.tensor([True, False, True])
    flipped = crop.resample(x, full, yes)
    assert torch.allclose(flipped[0], want[0].flip(-1), atol=1e-12) and torch.allclose(flipped[1], want[1])


def test_crop_boxes_follow_torchvision_sampling():
    torch.manual_seed(0)
    crop = A.FastRandomResizedCropFlip(32, scale=(0.08, 1.0))
    top, left, h, w = crop.boxes(4000, 60, 80, "cpu").unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 60).all() and (left + w <= 80).all()
    assert torch.equal(h, h.round()) and torch.equal(top, top.round())
    frac, ratio = h * w / (60 * 80), w / h
    assert frac.min() > 0.06 and frac.max() <= 1.0
    # torchvision's get_params, written out one box at a time: same mean area fraction (rejection favours small)
    import math
    import random
    rng = random.Random(0)

    def tv_box(H, W):
        for _ in range(10):
            a = H * W * rng.uniform(0.08, 1.0)
            r = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            bw, bh = round(math.sqrt(a * r)), round(math.sqrt(a / r))
            if 0 < bw <= W and 0 < bh <= H:
                return bh * bw / (H * W)
        return 1.0
    ref = sum(tv_box(60, 80) for _ in range(4000)) / 4000
    assert abs(frac.mean().item() - ref) < 0.02, (frac.mean().item(), ref)
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    # positions are uniform over the free range, not centred
    assert (top == 0).any() and (left + w == 80).any()
    # nothing fits (a square of >= 90 % of a 10x100 image): torchvision's fallback, the centred ratio-clamped box
    fb = A.FastRandomResizedCropFlip(8, scale=(0.9, 1.0), ratio=(1.0, 1.0)).boxes(5, 10, 100, "cpu")
    assert torch.equal(fb, torch.tensor([[0.0, 45.0, 10.0, 10.0]]).repeat(5, 1))


def test_fast_blur_matches_kornia_per_sample_sigma():
    import kornia.filters as KF

    x = torch.rand(4, 3, 24, 24, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0], dtype=torch.float64)
    got = A.gaussian_blur(x, sigma, 7)
    want = KF.gaussian_blur2d(x, (7, 7), torch.stack([sigma, sigma], 1), border_type="reflect")
    assert torch.allclose(got, want, atol=1e-10)
    torch.manual_seed(0)
    y = A.FastGaussianBlur(7, p=0.5)(x.repeat(64, 1, 1, 1))
    changed = (y - x.repeat(64, 1, 1, 1)).abs().amax((1, 2, 3)) > 1e-9
    assert 0.35 < changed.float().mean() < 0.65
    assert torch.equal(A.FastGaussianBlur(7, p=0.0)(x), x)
    with pytest.raises(ValueError, match="kernel_size"):
        A.FastGaussianBlur(4)


def test_fast_grayscale_coin():
    torch.manual_seed(0)
    x = torch.rand(500, 3, 4, 4)
    y = A.FastGrayscale(p=0.2)(x)
    grey = (y[:, 0] == y[:, 1]).all(-1).all(-1) & (y[:, 1] == y[:, 2]).all(-1).all(-1)
    assert 0.13 < grey.float().mean() < 0.27
    assert torch.equal(y[~grey], x[~grey])


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


def test_ssl_blur_sigma_range_is_configurable():
    aug = A.ImageSSLAugment(32, blur_sigma=(0.05, 0.5))
    blur = next(m for m in aug.ops if isinstance(m, A.FastGaussianBlur))
    assert blur.sigma == (0.05, 0.5)
    assert next(m for m in A.ImageSSLAugment(32).ops if isinstance(m, A.FastGaussianBlur)).sigma == (0.1, 2.0)
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0,)):
        with pytest.raises(ValueError, match="blur_sigma"):
            A.ImageSSLAugment(32, blur_sigma=bad)


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


def test_accelerator_select_paths_match_the_cpu_index_paths():
    # On a GPU the blur and jitter run on the whole batch and select (no host sync); forced here on the CPU
    x = torch.rand(64, 3, 16, 16, dtype=torch.float64)
    outs = []
    for select_all in (False, True):
        torch.manual_seed(3)
        outs.append(A.FastGaussianBlur(5, p=0.5, select_all=select_all)(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-12) and not torch.equal(outs[0], x)
    torch.manual_seed(0)
    y = A.FastColorJitter(p=0.5, select_all=True)(x)
    changed = (y - x).abs().amax((1, 2, 3)) > 0
    assert 0.3 < changed.float().mean() < 0.7 and y.min() >= 0 and y.max() <= 1
    # a sample whose coin is off is returned bit for bit
    assert torch.equal(y[~changed], x[~changed])
