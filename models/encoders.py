"""Per-modality encoders, all written here: no torchvision, no timm.

Every encoder exposes `out_dim`, the size of its feature axis (channels for CNN maps, the token width for
sequences, the vector size otherwise), so the baselines can size their projections without a dummy forward.
An encoder returns a Tensor, or a tuple (tokens, key_padding_mask) with True = padding.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import nn


def _check_positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class _ChannelsLast(nn.Module):
    """CNN trunks: optionally run in channels_last memory format (faster convolutions on GPU and recent CPUs)."""

    def __init__(self, channels_last: bool):
        super().__init__()
        self.channels_last = bool(channels_last)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _apply_format(self):
        if self.channels_last:
            self.to(memory_format=torch.channels_last)


class AlexNetTrunk(_ChannelsLast):
    """The `features` part of AlexNet, randomly initialised with PyTorch defaults (torchvision adds no init).

    (B, 3, 224, 224) -> (B, 256, 6, 6); at 128 px the grid is 3x3, at 64 px 1x1.

    ``width`` scales every layer's channels (1.0 = AlexNet; the cpu preset's 0.5 costs about a quarter of the
    convolutions), so ``out_dim`` is ``round(256 * width)``.
    """

    def __init__(self, channels_last: bool = False, width: float = 1.0):
        super().__init__(channels_last)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
            raise ValueError(f"width: must be a number in (0, 4], got {width!r}")
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 192, 384, 256))
        self.out_dim = c4
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self._apply_format()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self._prepare(x))


class ConvTrunk(_ChannelsLast):
    """A small strided CNN for low-resolution CPU presets (a deviation from the paper's AlexNet).

    A 5x5 stride-2 stem, then one 3x3 stride-2 convolution per further entry of ``widths``, each followed by
    BatchNorm and ReLU: (B, 3, S, S) -> (B, widths[-1], S / 2**len(widths), ...). With the default widths a 64 px
    image gives a 4x4 token grid and a 96 px image 6x6, for about a quarter of the multiply-adds of the half-width
    AlexNet at 128 px (which gives only 3x3). ``norm="none"`` drops the BatchNorm (then convolutions get a bias).
    """

    NORMS = ("bn", "none")

    def __init__(self, channels_last: bool = False, widths=(32, 64, 128, 128), norm: str = "bn"):
        super().__init__(channels_last)
        if (not isinstance(widths, (list, tuple)) or not widths
                or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
            raise ValueError(f"widths: must be a non-empty list of positive ints, got {widths!r}")
        if norm not in self.NORMS:
            raise ValueError(f"norm: must be one of {', '.join(self.NORMS)}, got {norm!r}")
        layers, c_in = [], 3
        for i, w in enumerate(widths):
            k = 5 if i == 0 else 3
            layers.append(nn.Conv2d(c_in, w, kernel_size=k, stride=2, padding=k // 2, bias=norm == "none"))
            if norm == "bn":
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.ReLU(inplace=True))
            c_in = w
        self.features = nn.Sequential(*layers)
        self.out_dim = int(widths[-1])
        self._apply_format()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self._prepare(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class ResNet18Trunk(_ChannelsLast):
    """ResNet-18 without pooling and classifier, initialised like timm's `resnet18` (pretrained=False).

    timm: Kaiming-normal (fan_out, relu) convolutions, BN (1, 0), and the last BN of every residual branch
    zero-initialised (zero_init_last=True). (B, 3, 128, 128) -> (B, 512, 4, 4).
    """

    out_dim = 512

    def __init__(self, channels_last: bool = False, zero_init_last: bool = True):
        super().__init__(channels_last)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes, in_planes = (64, 128, 256, 512), 64
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", nn.Sequential(BasicBlock(in_planes, p, stride), BasicBlock(p, p, 1)))
            in_planes = p
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
        self._apply_format()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(self._prepare(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def sincos_1d(length: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos table (1, length, dim): even columns sin, odd columns cos (MultiBench/FactorCL style)."""
    if dim % 2:
        raise ValueError(f"dim must be even for a sin-cos embedding, got {dim}")
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe.unsqueeze(0)


class AffectTransformer(nn.Module):
    """MultiBench/FactorCL sequence encoder: per-step linear map F->dim (1x1 conv, no bias), then 5 pre-LN
    TransformerEncoderLayers (5 heads, ff 2048, dropout 0.1, ReLU, no final norm); returns the whole sequence.

    The reference never masks padding here (its `pad_value` is unused); neither do we.
    """

    def __init__(self, n_features: int, dim: int = 40, n_layers: int = 5, n_heads: int = 5,
                 dim_feedforward: int = 2048, dropout: float = 0.1, positional_encoding: bool = False,
                 max_seq_length: int = 50):
        super().__init__()
        _check_positive("n_features", n_features)
        _check_positive("dim", dim)
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        self.out_dim = dim
        self.conv = nn.Conv1d(n_features, dim, kernel_size=1, padding=0, bias=False)
        self.positional_encoding = bool(positional_encoding)
        self.register_buffer("pos_emb", sincos_1d(max_seq_length, dim), persistent=False)
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=n_heads, dim_feedforward=dim_feedforward,
                                           dropout=dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"x must be (B, T, F), got shape {tuple(x.shape)}")
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        if self.positional_encoding:
            x = x + self.pos_emb[:, : x.shape[1]].to(x.dtype)
        return self.transformer(x)


class MLPEncoder(nn.Module):
    """Linear(in, hidden) -> ReLU -> Linear(hidden, out), no dropout (MIMIC tabular: MLP(5, 10, 10))."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.out_dim = _check_positive("out_dim", out_dim)
        self.net = nn.Sequential(nn.Linear(_check_positive("in_dim", in_dim), _check_positive("hidden_dim", hidden_dim)),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GRUEncoder(nn.Module):
    """One-layer batch-first GRU returning every hidden state: (B, T, in) -> (B, T, hidden)."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.out_dim = _check_positive("hidden_dim", hidden_dim)
        self.gru = nn.GRU(_check_positive("in_dim", in_dim), hidden_dim, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class CausalConv1d(nn.Conv1d):
    """Conv1d padded by (k-1) on both sides with the trailing k-1 outputs dropped, i.e. left padding only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        self._causal_pad = kernel_size - 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=self._causal_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out[:, :, : -self._causal_pad] if self._causal_pad else out


class ForceEncoder(nn.Module):
    """Vision&Touch force encoder: (B, 32, 6) -> five causal convs (k2, s2) with LeakyReLU(0.1) -> (B, z).

    PyTorch default init: the reference's Kaiming helper only touches 2-D convs, so it changes nothing here.
    """

    def __init__(self, z: int):
        super().__init__()
        self.out_dim = _check_positive("z", z)
        chans = (6, 16, 32, 64, 128, z)
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [CausalConv1d(c_in, c_out, kernel_size=2, stride=2), nn.LeakyReLU(0.1, inplace=True)]
        self.frc_encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"x must be (B, 32, 6), got shape {tuple(x.shape)}")
        out = self.frc_encoder(x.transpose(-1, -2).float())
        return out.reshape(len(out), -1)


class ProprioEncoder(nn.Module):
    """Vision&Touch proprioception encoder: 8 -> 32 -> 64 -> 128 -> z, LeakyReLU(0.1) after each layer."""

    def __init__(self, z: int):
        super().__init__()
        self.out_dim = _check_positive("z", z)
        dims = (8, 32, 64, 128, z)
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.1, inplace=True)]
        self.proprio_encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proprio_encoder(x.float())


class IdentityEncoder(nn.Module):
    """Pass-through, for inputs that already are tokens or features (e.g. cached frozen-tower features).

    `dim` is only needed by the baselines that size a projection on the encoder output.
    """

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.out_dim = dim

    def forward(self, x):
        return x


ENCODERS: dict[str, type[nn.Module]] = {
    "alexnet": AlexNetTrunk,
    "convnet": ConvTrunk,
    "resnet18": ResNet18Trunk,
    "affect_transformer": AffectTransformer,
    "mlp": MLPEncoder,
    "gru": GRUEncoder,
    "force": ForceEncoder,
    "proprio": ProprioEncoder,
    "identity": IdentityEncoder,
}

# Encoders defined elsewhere, imported only when built: the frozen CLIP towers need transformers (MM-IMDb only).
LAZY_ENCODERS: dict[str, str] = {
    "clip_image": "infmask.models.clip_towers:ClipImageEncoder",
    "clip_text": "infmask.models.clip_towers:ClipTextEncoder",
}

# Encoders whose constructor takes `channels_last` (the model-level switch is passed only to these).
CNN_ENCODERS = ("alexnet", "convnet", "resnet18")
# Encoders that load pretrained weights from a folder (the config's data.weights_dir is passed only to these).
WEIGHTS_ENCODERS = ("clip_image", "clip_text")


def encoder_names() -> list[str]:
    return sorted([*ENCODERS, *LAZY_ENCODERS])


def encoder_class(name: str) -> type[nn.Module]:
    """The class registered as `name`, importing its module if it is one of LAZY_ENCODERS."""
    if name in ENCODERS:
        return ENCODERS[name]
    if name in LAZY_ENCODERS:
        module, cls = LAZY_ENCODERS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    raise ValueError(f"encoder must be one of {encoder_names()}, got {name!r}")


def build_encoder(name: str, channels_last: bool = False, default_weights_dir=None, **kwargs) -> nn.Module:
    """`default_weights_dir` (the config's data.weights_dir): where pretrained weights are looked up unless the
    encoder's own kwargs name a `weights_dir`."""
    cls = encoder_class(name)
    if name in CNN_ENCODERS:
        kwargs.setdefault("channels_last", channels_last)
    if name in WEIGHTS_ENCODERS and not kwargs.get("weights_dir"):
        kwargs["weights_dir"] = default_weights_dir
    return cls(**kwargs)
