"""Small synthetic modalities, method configs and SSL batches for building and stepping methods on CPU."""
import torch

MOD_IMAGE = {"name": "image", "encoder": "alexnet", "encoder_kwargs": {}, "adapter": "patched",
             "adapter_kwargs": {"num_channels": 256, "grid_size": 1}}
MOD_TAB = {"name": "tab", "encoder": "mlp", "encoder_kwargs": {"in_dim": 5, "hidden_dim": 10, "out_dim": 10},
           "adapter": "features", "adapter_kwargs": {"n_features": 10}}
MOD_SEQ = {"name": "seq", "encoder": "gru", "encoder_kwargs": {"in_dim": 3, "hidden_dim": 16}, "adapter": "none"}
MOD_PROPRIO = {"name": "proprio", "encoder": "proprio", "encoder_kwargs": {"z": 16}, "adapter": "simple_features"}


def make_cfg(method, mods, **model):
    m = {"embed_dim": 16, "n_layers": 1, "n_heads": 4, "mask_ratio": 0.5, "num_mask": 3, "temperature": 0.1,
         "mask_lambda": 1.0, "head_hidden": 32, "head_out": 8, "cross_proj_dim": 8, "cross_self_hidden": 32,
         "modalities": mods}
    m.update(model)
    return {"benchmark": "test", "method": method, "preset": "smoke", "seed": 0, "model": m,
            "optim": {"lr": 1e-3, "weight_decay": 1e-4, "scheduler": "warmup_cosine", "warmup_epochs": 1},
            "trainer": {"max_epochs": 2}}


def sample(mod, n, g):
    enc = mod["encoder"]
    if enc == "alexnet":
        return torch.randn(n, 3, 64, 64, generator=g)
    if enc == "mlp":
        return torch.randn(n, 5, generator=g)
    if enc == "gru":
        return torch.randn(n, 6, 3, generator=g)
    return torch.randn(n, 8, generator=g)


def make_batch(mods, B=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = [sample(m, B, g).to(dtype) for m in mods]
    views = [[t + 0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype) for t in x] for _ in range(2)]
    return {"views": views, "x": x}
