"""Frozen CLIP towers for MM-IMDb, the encoders "clip_image" and "clip_text" (`encoders.py` imports this module
only when one of them is built).

What each tower returns, exactly:

* ``clip_image`` (transformers ``CLIPVisionModel``): pixels (B, 3, S, S), already normalised by the data module,
  -> (B, 1 + (S/patch)^2, D) = (B, 50, 768) for ViT-B/32 at 224. The tokens are the vision transformer's last hidden
  states with ``post_layernorm`` applied to **every** token. transformers applies that LayerNorm to the CLS token
  only (its ``pooler_output``) and returns ``last_hidden_state`` un-normalised; the reference's timm model
  (``vit_base_patch32_clip_224.openai``, ``global_pool=""``) applies its final norm (the same ``ln_post`` weights)
  to all tokens, so we do the same. No projection to the joint CLIP space is used.
* ``clip_text`` (transformers ``CLIPTextModel``, or ``AutoModel`` for a non-CLIP text model such as the
  reference's DistilBERT-based multilingual encoder): token ids (B, L) int64 with **-1 marking padding** ->
  ``(tokens (B, L, D), key_padding_mask (B, L) bool, True = padding)``. CLIP's tokens are the last hidden states
  after ``final_layer_norm``; for a BERT-like model they are its ``last_hidden_state`` (sentence-transformers'
  ``token_embeddings``). -1 is used for padding because CLIP's pad id equals its end-of-text id.

Both towers are frozen: their weights are kept out of ``parameters()`` and ``state_dict()`` (checkpoints stay
small and the optimiser never sees them), run under ``no_grad`` in eval mode, and follow the input's device.
An optional trainable ``nn.Linear(width, dim)`` (``dim`` != ``width``) maps the tower width to the fusion width;
CLIP's text tower is 512 wide while the paper's fusion is 768 wide (the reference's DistilBERT text encoder is 768
wide and needed none).

Cached mode: each tower also accepts its own precomputed output and then only applies the projection:
``clip_image`` takes float (B, L, width); ``clip_text`` takes float (B, L, width + 1) whose last channel is the
padding flag (1.0 = padding). Towers are loaded lazily at the first raw input, so cached runs never load them.

Weights are never downloaded here. ``weights`` names a model (default ``openai/clip-vit-base-patch32``); it is
looked up as ``<dir>/<weights>`` or ``<dir>`` itself (a directory holding ``config.json``), where ``<dir>`` is the
encoder's ``weights_dir`` (its ``encoder_kwargs``, else the config's ``data.weights_dir``, which
``build_encoder`` passes in), else ``$INFMASK_CLIP_DIR``; then in the local Hugging Face cache (offline).
Missing weights raise ``MissingWeightsError`` naming what to fetch and where to put it.

Text-token masking (the reference's 15 % [MASK] replacement in training) is a data augmentation, so it lives
with the data (``infmask.data.text_masking``), as do the images' normalisation statistics (``infmask.data.augment``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

DEFAULT_WEIGHTS = "openai/clip-vit-base-patch32"
ENV_DIR = "INFMASK_CLIP_DIR"
PAD_ID = -1          # padding marker in the token-id tensors the data module yields

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers are used in forked loader workers


class MissingWeightsError(FileNotFoundError):
    """The frozen tower's weights are not on this machine (we never download them)."""


def weights_root(weights_dir=None) -> Optional[Path]:
    """The folder to look in: `weights_dir` when given, else $INFMASK_CLIP_DIR (the documented fallback)."""
    for cand in (weights_dir, os.environ.get(ENV_DIR)):
        if cand not in (None, ""):
            return Path(cand).expanduser()
    return None


def fetch_hint(weights: str = DEFAULT_WEIGHTS, root: Optional[Path] = None) -> str:
    where = f"{root}/{weights}" if root else f"DIR/{weights}"
    return (f"fetch '{weights}' on a machine with internet access, e.g. `python -c \"from transformers import "
            f"AutoModel, AutoTokenizer; n='{weights}'; AutoModel.from_pretrained(n).save_pretrained('{where}'); "
            f"AutoTokenizer.from_pretrained(n).save_pretrained('{where}')\"` (or `hf download {weights} "
            f"--local-dir {where}`), copy it to {where} here, and point data.weights_dir=DIR (or export "
            f"{ENV_DIR}=DIR) at the folder above it")


def resolve_weights(weights: str = DEFAULT_WEIGHTS, weights_dir=None) -> Path:
    """The local directory holding `weights` (config.json + weights + tokenizer files); never downloads."""
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights: expected a model name or directory, got {weights!r}")
    looked = []
    direct = Path(weights).expanduser()
    if direct.is_absolute() or weights.startswith("."):
        if (direct / "config.json").is_file():
            return direct
        looked.append(str(direct))
    root = weights_root(weights_dir)
    if root is not None:
        for cand in (root / weights, root):
            if (cand / "config.json").is_file():
                return cand
            looked.append(str(cand))
    cached = _hf_cache_dir(weights)
    if cached is not None:
        return cached
    looked.append(f"the Hugging Face cache (offline) for '{weights}'")
    configured = ("no weights directory is configured (data.weights_dir is null and $" + ENV_DIR + " is unset)"
                  if root is None else f"nothing usable under {root}")
    raise MissingWeightsError(f"frozen CLIP weights '{weights}' not found: {configured}; looked in "
                              f"{', '.join(looked)}. Weights are never downloaded by infmask: "
                              + fetch_hint(weights, root))


def _hf_cache_dir(weights: str) -> Optional[Path]:
    if weights.count("/") != 1 or weights.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        return None
    try:
        path = Path(snapshot_download(weights, local_files_only=True))
    except Exception:
        return None
    return path if (path / "config.json").is_file() else None


def weights_fingerprint(path: Path) -> dict:
    """Identity of a weights directory for cache keys: config hash and the sizes of the files."""
    import hashlib

    path = Path(path)
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    cfg = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    return {"config_sha256": cfg, "files": files}


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover
        pass
    return transformers


def _model_type(path: Path) -> str:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError) as e:
        raise MissingWeightsError(f"{path}/config.json is unreadable ({e}); fetch the weights again") from None


def _load(cls, path: Path, what: str):
    _quiet_transformers()
    model, info = cls.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise MissingWeightsError(f"{path} does not hold a complete {what} ({len(missing)} missing tensors, e.g. "
                                  f"{missing[0]}); fetch the weights again: " + fetch_hint(path.name))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_tokenizer(path: Path):
    _quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def text_max_length(path: Path, tokenizer) -> int:
    """Longest token sequence the text tower takes: the smallest of the tokenizer's limit, the model's position
    table and sentence-transformers' ``max_seq_length`` (128 for the reference's multilingual model)."""
    limits = []
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 100_000:
        limits.append(tml)
    cfg = json.loads((Path(path) / "config.json").read_text())
    text_cfg = cfg.get("text_config", cfg) if cfg.get("model_type") == "clip" else cfg
    if isinstance(text_cfg.get("max_position_embeddings"), int):
        limits.append(text_cfg["max_position_embeddings"])
    st = Path(path) / "sentence_bert_config.json"
    if st.is_file():
        limits.append(int(json.loads(st.read_text()).get("max_seq_length", 10 ** 9)))
    if not limits:
        raise ValueError(f"weights: cannot tell the longest text sequence of {path}")
    return min(limits)


# ------------------------------------------------------------------------------------------------------ towers

class _FrozenTower(nn.Module):
    """Lazily loaded frozen model kept outside the module tree, plus an optional trainable projection."""

    what = "model"

    def __init__(self, weights: str = DEFAULT_WEIGHTS, weights_dir=None, width: Optional[int] = None,
                 dim: Optional[int] = None):
        super().__init__()
        if width is None:  # read the width now (needs the weights to be resolvable at construction)
            width = self._read_width(resolve_weights(weights, weights_dir))
        for name, v in (("width", width), ("dim", dim)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name}: must be a positive int, got {v!r}")
        self.weights, self.weights_dir = weights, weights_dir
        self.width = int(width)
        self.out_dim = int(dim or width)
        self.proj = nn.Linear(self.width, self.out_dim) if self.out_dim != self.width else None
        self._frozen: dict = {}   # {"model": ...}: not a registered submodule on purpose (frozen, not saved)

    @classmethod
    def _read_width(cls, path: Path) -> int:
        raise NotImplementedError

    def tower(self, device: torch.device):
        model = self._frozen.get("model")
        if model is None:
            path = resolve_weights(self.weights, self.weights_dir)
            model = self._build(path)
            self._check_width(model)
            self._frozen["model"] = model
        if next(model.parameters()).device != device:
            model.to(device)
        return model

    def _build(self, path: Path):
        raise NotImplementedError

    def _check_width(self, model) -> None:
        if model.config.hidden_size != self.width:
            raise ValueError(f"width: encoder_kwargs say {self.width} but the {self.what} in "
                             f"{resolve_weights(self.weights, self.weights_dir)} is {model.config.hidden_size} wide")

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.proj is None else self.proj(tokens)

    def __getstate__(self):  # pickling (e.g. spawned workers) re-loads the tower lazily instead of copying it
        state = self.__dict__.copy()
        state["_frozen"] = {}
        return state


class ClipImageEncoder(_FrozenTower):
    """(B, 3, S, S) normalised pixels -> (B, 1 + P, D) tokens after the final LayerNorm (see module docstring);
    a float (B, L, width) input is taken as cached tokens."""

    what = "CLIP vision tower"

    @classmethod
    def _read_width(cls, path: Path) -> int:
        cfg = json.loads((path / "config.json").read_text())
        return int(cfg.get("vision_config", cfg)["hidden_size"])

    def _build(self, path: Path):
        from transformers import CLIPVisionModel

        return _load(CLIPVisionModel, path, self.what)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x: expected a tensor, got {type(x).__name__}")
        if x.ndim == 3:
            if x.shape[-1] != self.width:
                raise ValueError(f"x: cached image tokens must be (B, L, {self.width}), got {tuple(x.shape)}")
            return self._project(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected pixels (B, 3, S, S) or cached tokens (B, L, {self.width}), "
                             f"got {tuple(x.shape)}")
        return self._project(self.run_tower(x))

    @torch.no_grad()
    def run_tower(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen tower alone: (B, 3, S, S) -> (B, 1 + P, width), post_layernorm on every token."""
        model = self.tower(x.device)
        size = model.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"x: the CLIP vision tower takes {size}x{size} images, got {tuple(x.shape[-2:])}")
        vm = getattr(model, "vision_model", model)   # transformers < 5 nests the transformer one level down
        hidden = model(pixel_values=x).last_hidden_state
        return vm.post_layernorm(hidden)


class ClipTextEncoder(_FrozenTower):
    """(B, L) int64 token ids, -1 = padding -> (tokens (B, L, D), key_padding_mask (B, L), True = padding);
    a float (B, L, width + 1) input is taken as cached tokens with the padding flag in the last channel."""

    what = "text tower"

    @classmethod
    def _read_width(cls, path: Path) -> int:
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") == "clip":
            cfg = cfg["text_config"]
        return int(cfg.get("hidden_size") or cfg.get("dim") or cfg["d_model"])

    def _build(self, path: Path):
        kind = _model_type(path)
        if kind in ("clip", "clip_text_model"):
            from transformers import CLIPTextModel

            return _load(CLIPTextModel, path, "CLIP text tower")
        from transformers import AutoModel

        return _load(AutoModel, path, f"{kind or 'text'} model")

    def _check_width(self, model) -> None:
        cfg = model.config
        width = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)
        if width != self.width:
            raise ValueError(f"width: encoder_kwargs say {self.width} but the text model in "
                             f"{resolve_weights(self.weights, self.weights_dir)} is {width} wide")

    def forward(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x: expected a tensor, got {type(x).__name__}")
        if x.is_floating_point():
            if x.ndim != 3 or x.shape[-1] != self.width + 1:
                raise ValueError(f"x: cached text tokens must be (B, L, {self.width + 1}) with the padding flag "
                                 f"last, got {tuple(x.shape)}")
            return self._project(x[..., :-1]), x[..., -1] > 0.5
        if x.ndim != 2:
            raise ValueError(f"x: expected token ids (B, L) with -1 = padding, got {tuple(x.shape)}")
        tokens, pad = self.run_tower(x)
        return self._project(tokens), pad

    @torch.no_grad()
    def run_tower(self, ids: torch.Tensor):
        """The frozen tower alone: ids (B, L), -1 = padding -> (tokens (B, L, width), padding (B, L))."""
        model = self.tower(ids.device)
        pad = ids < 0
        attention = (~pad).long()
        fill = getattr(model.config, "pad_token_id", None)
        clean = ids.masked_fill(pad, int(fill) if fill is not None and fill >= 0 else 0)
        out = model(input_ids=clean, attention_mask=attention).last_hidden_state
        return out, pad


# ------------------------------------------------------------------------------------------------ random towers

def _byte_vocab() -> dict:
    """A CLIP BPE vocabulary without merges: every byte alone and as a word end, plus the two special tokens."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    return vocab


def save_random_clip(path, *, vision_width: int = 768, text_width: int = 512, layers: int = 1,
                     image_size: int = 224, patch_size: int = 32, intermediate: int = 256, max_length: int = 77,
                     seed: int = 0) -> Path:
    """Write a randomly initialised CLIP (both towers + a byte-level tokenizer) in the layout of a downloaded
    ``openai/clip-vit-base-patch32``, for tests and timings only: the same token shapes as ViT-B/32 by default,
    but `layers` deep and with a small MLP. Returns `path`."""
    _quiet_transformers()
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (path / "merges.txt").write_text("#version: 0.2\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                            "model_max_length": max_length, **specials}))
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tc = CLIPTextConfig(vocab_size=514, hidden_size=text_width, intermediate_size=intermediate,
                        num_hidden_layers=layers, num_attention_heads=max(1, text_width // 64),
                        max_position_embeddings=max_length, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vc = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=intermediate, num_hidden_layers=layers,
                          num_attention_heads=max(1, vision_width // 64), image_size=image_size,
                          patch_size=patch_size)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=32))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
