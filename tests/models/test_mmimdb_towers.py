"""Frozen CLIP towers (models/clip_towers.py) on tiny random towers saved to a temp dir; nothing is downloaded."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from helpers.mmimdb_support import HUB_NAME, TEST_IMAGE_SIZE, TEST_MAX_LENGTH, tiny_clip  # noqa: E402

from infmask.models import clip_towers as ct  # noqa: E402
from infmask.data.text_masking import TokenMasker, mask_token_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    tiny_clip(d)
    return d


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No env dir, an empty HF cache, and any attempt to open a connection fails."""
    monkeypatch.delenv(ct.ENV_DIR, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(self, *a, **k):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_registered_and_imports_stay_light():
    from infmask.models.encoders import encoder_class, encoder_names

    assert encoder_class("clip_image") is ct.ClipImageEncoder and encoder_class("clip_text") is ct.ClipTextEncoder
    assert {"clip_image", "clip_text"} <= set(encoder_names())
    code = ("import sys, infmask.models.encoders; assert 'transformers' not in sys.modules; "
            "assert 'infmask.models.clip_towers' not in sys.modules; "
            "import transformers.models.clip.modeling_clip, transformers; "
            "assert 'torchvision' not in sys.modules and 'timm' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_image_tokens_are_post_layernormed_everywhere(weights):
    from transformers import CLIPVisionModel

    enc = ct.ClipImageEncoder(weights=HUB_NAME, weights_dir=str(weights), width=768)
    x = torch.randn(3, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    tokens = enc(x)
    assert tokens.shape == (3, 1 + (TEST_IMAGE_SIZE // 32) ** 2, 768)
    ref = CLIPVisionModel.from_pretrained(str(weights / HUB_NAME)).eval()
    with torch.no_grad():
        out = ref(pixel_values=x)
        ln = getattr(ref, "vision_model", ref).post_layernorm
        expected = ln(out.last_hidden_state)
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(tokens[:, 0], out.pooler_output)           # CLS = transformers' pooled output
    assert not torch.allclose(tokens[:, 1:], out.last_hidden_state[:, 1:])  # patches normed too (unlike HF)
    with pytest.raises(ValueError, match="x"):
        enc(torch.randn(1, 3, 32, 32))


def test_towers_are_frozen_and_kept_out_of_checkpoints(weights):
    enc = ct.ClipImageEncoder(weights=HUB_NAME, weights_dir=str(weights), width=768, dim=32)
    x = torch.randn(2, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    enc(x).sum().backward()
    assert sorted(enc.state_dict()) == ["proj.bias", "proj.weight"]
    assert [n for n, _ in enc.named_parameters()] == ["proj.weight", "proj.bias"]
    assert enc.proj.weight.grad is not None
    tower = enc._frozen["model"]
    assert all(not p.requires_grad and p.grad is None for p in tower.parameters()) and not tower.training
    enc.train()
    assert not tower.training
    plain = ct.ClipTextEncoder(weights=HUB_NAME, weights_dir=str(weights), width=512)
    assert list(plain.parameters()) == [] and plain.out_dim == 512
    with pytest.raises(ValueError, match="width"):
        ct.ClipImageEncoder(weights=HUB_NAME, weights_dir=str(weights), width=512)(x)


def test_text_tokens_padding_mask_and_padding_independence(weights):
    from infmask.data.mmimdb_datamodule import tokenize
    from transformers import CLIPTextModel

    path = weights / HUB_NAME
    tok = ct.load_tokenizer(path)
    enc = ct.ClipTextEncoder(weights=HUB_NAME, weights_dir=str(weights), width=512)
    texts = ["a detective hunts a killer in the city", "war"]
    ids = tokenize(tok, texts, ct.text_max_length(path, tok))
    tokens, pad = enc(ids)
    assert tokens.shape == (*ids.shape, 512) and pad.dtype == torch.bool
    assert torch.equal(pad, ids < 0) and pad[0].sum() == 0 and pad[1].sum() > 0
    n = int((~pad[1]).sum())
    assert ids[1, 0] == tok.bos_token_id and ids[1, n - 1] == tok.eos_token_id
    alone, pad_alone = enc(tokenize(tok, texts[1:], TEST_MAX_LENGTH))
    assert not pad_alone.any() and alone.shape[1] == n
    torch.testing.assert_close(tokens[1, :n], alone[0])                   # padding never changes real tokens
    ref = CLIPTextModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        expected = ref(input_ids=ids[:1]).last_hidden_state                 # after final_layer_norm
    torch.testing.assert_close(tokens[:1], expected)
    assert ct.text_max_length(path, tok) == TEST_MAX_LENGTH


def test_cached_inputs_pass_through_without_loading_a_tower():
    img = ct.ClipImageEncoder(weights="nowhere/absent-model", width=768, dim=16)
    txt = ct.ClipTextEncoder(weights="nowhere/absent-model", width=512, dim=16)
    t = torch.randn(2, 50, 768)
    torch.testing.assert_close(img(t), img.proj(t))
    cached = torch.randn(2, 7, 513)
    cached[..., -1] = torch.tensor([[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    tokens, pad = txt(cached)
    assert tokens.shape == (2, 7, 16) and pad.tolist() == [[False] * 5 + [True] * 2, [False] * 3 + [True] * 4]
    assert img._frozen == {} and txt._frozen == {}
    with pytest.raises(ValueError, match="x"):
        txt(torch.randn(2, 7, 512))


def test_missing_weights_say_what_to_fetch_and_where(tmp_path, monkeypatch):
    with pytest.raises(ct.MissingWeightsError) as e:
        ct.resolve_weights(HUB_NAME)
    msg = str(e.value)
    assert HUB_NAME in msg and "data.weights_dir" in msg and ct.ENV_DIR in msg and "never downloaded" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ct.MissingWeightsError, match=str(empty)):
        ct.resolve_weights(HUB_NAME, empty)
    with pytest.raises(ct.MissingWeightsError):     # lazily, at the first raw input
        ct.ClipImageEncoder(width=768)(torch.randn(1, 3, 64, 64))


def test_weights_found_by_env_by_weights_dir_and_directly(weights, monkeypatch):
    from infmask.models.encoders import build_encoder

    path = weights / HUB_NAME
    monkeypatch.setenv(ct.ENV_DIR, str(weights))
    assert ct.resolve_weights(HUB_NAME) == path
    monkeypatch.delenv(ct.ENV_DIR)
    assert ct.resolve_weights(HUB_NAME, weights_dir=path) == path   # a directory that is the model itself
    with pytest.raises(ct.MissingWeightsError):
        ct.resolve_weights(HUB_NAME)
    assert ct.resolve_weights(str(path)) == path
    # the config's data.weights_dir reaches the towers through build_encoder; encoder_kwargs take precedence
    enc = build_encoder("clip_text", default_weights_dir=str(weights), weights=HUB_NAME)
    assert enc.weights_dir == str(weights) and enc.width == 512
    enc = build_encoder("clip_text", default_weights_dir="/nowhere", weights=HUB_NAME, weights_dir=str(weights))
    assert enc.weights_dir == str(weights)
    enc = ct.ClipTextEncoder(weights=str(path))      # width read from config.json when not given
    assert enc.width == 512


def test_token_masking_spares_padding_and_specials():
    ids = torch.randint(0, 500, (64, 50))
    ids[:, 0], ids[:, 30] = 512, 513
    ids[:, 31:] = -1
    g = torch.Generator().manual_seed(0)
    out = mask_token_ids(ids, 0.15, mask_id=513, special_ids=[512, 513], generator=g)
    assert torch.equal(out[:, 31:], ids[:, 31:]) and (out[:, 0] == 512).all() and (out[:, 30] == 513).all()
    changed = (out != ids)[:, 1:30]
    assert (out[:, 1:30][changed] == 513).all()
    assert 0.12 < changed.float().mean().item() < 0.18
    assert torch.equal(mask_token_ids(ids, 0.0, 513), ids)
    with pytest.raises(ValueError, match="prob"):
        mask_token_ids(ids, 1.0, 513)


def test_masker_uses_mask_token_when_the_tokenizer_has_one(weights, tmp_path):
    clip = TokenMasker(ct.load_tokenizer(weights / HUB_NAME), 0.15)
    assert not clip.uses_mask_token and clip.mask_id == 513 and clip.special_ids == [512, 513]
    bert = _tiny_bert(tmp_path / "bert")
    masker = TokenMasker(ct.load_tokenizer(bert), 0.5)
    tok = ct.load_tokenizer(bert)
    assert masker.uses_mask_token and masker.mask_id == tok.mask_token_id
    assert tok.unk_token_id not in masker.special_ids and tok.cls_token_id in masker.special_ids


def _tiny_bert(d: Path) -> Path:
    """A DistilBERT text tower with a sentence-transformers config, like the reference's multilingual encoder."""
    from transformers import DistilBertConfig, DistilBertModel

    d.mkdir(parents=True, exist_ok=True)
    words = "a the movie dog cat love war city killer hope".split()
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                                         "model_max_length": 512}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=15, dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                     max_position_embeddings=512, pad_token_id=0)).save_pretrained(str(d))
    return d


def test_non_clip_text_tower_loads_through_automodel(tmp_path):
    from infmask.data.mmimdb_datamodule import tokenize

    path = _tiny_bert(tmp_path / "bert")
    tok = ct.load_tokenizer(path)
    assert ct.text_max_length(path, tok) == 128               # sentence-transformers' max_seq_length wins
    enc = ct.ClipTextEncoder(weights=str(path), width=32, dim=48)
    ids = tokenize(tok, ["the dog loves a cat", "war"], 128)
    tokens, pad = enc(ids)
    assert tokens.shape == (2, ids.shape[1], 48) and torch.equal(pad, ids < 0)
    assert os.environ.get("TOKENIZERS_PARALLELISM") == "false"
