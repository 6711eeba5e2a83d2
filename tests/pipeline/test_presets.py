"""Presets keep what they are for: the Trifeatures smoke preset (the demo's, and the one to try a sweep on) gives
every image a token grid on which the mask ratio changes what a masked view keeps."""
import pytest
import torch

from infmask.models.fusion import keep_count
from infmask.models.methods import build_encoders
from infmask.config import build_config


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_trifeatures_token_grid_makes_the_mask_ratio_matter(preset):
    cfg = build_config("trifeatures", "infmasking", preset)
    size = cfg.data.image_size
    for enc, mod in zip(build_encoders(cfg.to_dict()["model"]), cfg.model.modalities):
        fmap = enc(torch.zeros(2, 3, size, size))
        tokens = fmap.shape[2] * fmap.shape[3]
        assert fmap.shape[2] == fmap.shape[3] == mod["adapter_kwargs"]["grid_size"] >= 2   # at least 2x2
        assert fmap.shape[1] == mod["adapter_kwargs"]["num_channels"]
        kept = [keep_count(tokens, rho, cfg.model.keep_rounding) for rho in (0.3, 0.5, 0.7)]
        assert len(set(kept)) == 3, (preset, tokens, kept)   # the sweep's ratios keep different token counts

