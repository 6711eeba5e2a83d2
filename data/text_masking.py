"""Text-token masking, the reference's training-time augmentation of the text views (15 % of tokens replaced by
[MASK]), applied by the MM-IMDb data module to the token ids before the frozen text tower sees them."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def mask_token_ids(ids: torch.Tensor, prob: float, mask_id: int, special_ids: Sequence[int] = (),
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Replace each token by `mask_id` with probability `prob` (independently per token), never padding (id < 0)
    nor `special_ids` (BOS/EOS for CLIP, [CLS]/[SEP]/[PAD] for BERT-like tokenizers). Returns a new tensor."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids: expected an integer tensor, got {ids.dtype}")
    if not 0.0 <= float(prob) < 1.0:
        raise ValueError(f"prob: must be in [0, 1), got {prob}")
    if prob == 0.0:
        return ids.clone()
    eligible = ids >= 0
    for s in set(int(s) for s in special_ids):
        eligible &= ids != s
    hit = torch.rand(ids.shape, device=ids.device, generator=generator) < prob
    return torch.where(eligible & hit, torch.as_tensor(mask_id, dtype=ids.dtype, device=ids.device), ids)


class TokenMasker:
    """The text tower's training-time token masking, built from its tokenizer.

    The reference's DistilBERT tokenizer has a [MASK] token. CLIP's BPE vocabulary has none, so masked positions
    get the tokenizer's unknown token (for CLIP ``<|endoftext|>``, the same id as its end-of-text token)."""

    def __init__(self, tokenizer, prob: float):
        if not 0.0 <= float(prob) < 1.0:
            raise ValueError(f"prob (data.text_mask_prob): must be in [0, 1), got {prob}")
        self.prob = float(prob)
        mask_id = getattr(tokenizer, "mask_token_id", None)
        self.uses_mask_token = mask_id is not None
        if mask_id is None:
            mask_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
        if mask_id is None:
            raise ValueError("tokenizer: has neither a mask, an unknown nor a padding token to mask with")
        self.mask_id = int(mask_id)
        # the reference never masks padding, CLS and SEP (here also BOS/EOS, CLIP's equivalents); [UNK] may be
        ids = (getattr(tokenizer, f"{k}_token_id", None) for k in ("cls", "sep", "bos", "eos", "pad"))
        self.special_ids = sorted({int(i) for i in ids if i is not None})

    def __call__(self, ids: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return mask_token_ids(ids, self.prob, self.mask_id, self.special_ids, generator)
