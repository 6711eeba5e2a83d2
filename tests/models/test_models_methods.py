"""Methods: training steps under a real Lightning Trainer, the reference-formulation parity, config plumbing."""
import copy
import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from infmask.models.fusion import random_keep_mask
from infmask.models.methods import METHODS, InfMasking, NonFiniteLossError, build_method
from infmask.models.reference import reference_step

from helpers.method_inputs import MOD_IMAGE, MOD_PROPRIO, MOD_SEQ, MOD_TAB, make_batch, make_cfg

ROOT = Path(__file__).resolve().parents[2]


class RandomSSL(Dataset):
    def __init__(self, mods, n=8):
        self.mods, self.n = mods, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        b = make_batch(self.mods, B=1, seed=i)
        return {"views": [[t[0] for t in v] for v in b["views"]], "x": [t[0] for t in b["x"]]}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_step_under_lightning_trainer_two_modalities(method):
    mods = [MOD_IMAGE, MOD_TAB]
    model = build_method(make_cfg(method, mods))
    loader = DataLoader(RandomSSL(mods), batch_size=4)
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader, loader)
    logged = trainer.callback_metrics
    assert "train/loss" in logged and math.isfinite(float(logged["train/loss"]))
    assert "val/loss" in logged and "val/ssl_acc" in logged
    if method == "infmasking":
        assert {"train/mask_ratio_r", "train/ssl_loss_4", "train/ssl_acc"} <= set(logged)
    if method == "cross":
        assert 0 <= model.logit_scale.item() <= 4.6052


@pytest.mark.parametrize("method", sorted(METHODS))
def test_manual_steps_three_modalities(method):
    mods = [MOD_IMAGE, MOD_SEQ, MOD_PROPRIO]
    model = build_method(make_cfg(method, mods, n_layers=2))
    opt = model.configure_optimizers()["optimizer"]
    for step in range(2):
        opt.zero_grad()
        loss = model.training_step(make_batch(mods, seed=step), step)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        feats = model.features(make_batch(mods)["x"])
    expected = {"infmasking": 16, "comm": 16, "cross": 3 * 8, "cross_self": 256 + 16 + 16, "cmc": 256 + 16 + 16}
    assert feats.shape == (4, expected[method])


@pytest.mark.parametrize("method", ["infmasking", "cross"])
def test_compile_encoders_in_place_keeps_checkpoint_keys(method):
    # trainer.compile compiles the encoders (the training step never calls the LightningModule's forward);
    # parameter names stay, so a checkpoint of a compiled run loads into a plain model
    mods = [MOD_TAB, MOD_PROPRIO]
    plain = build_method(make_cfg(method, mods))
    compiled = copy.deepcopy(plain)
    assert compiled.compile_encoders(backend="eager") == 2
    assert list(compiled.state_dict()) == list(plain.state_dict())
    batch = make_batch(mods)
    torch.manual_seed(0)
    a = plain.training_step(batch, 0)
    torch.manual_seed(0)
    b = compiled.training_step(batch, 0)
    assert torch.allclose(a, b, atol=1e-6)


def test_infmasking_loss_key_count_three_modalities():
    mods = [MOD_IMAGE, MOD_SEQ, MOD_PROPRIO]
    out = build_method(make_cfg("infmasking", mods)).compute_loss(make_batch(mods))
    assert {f"ssl_loss_{k}" for k in range(6)} <= set(out) and "ssl_loss_6" not in out


@pytest.mark.parametrize("n_layers", [1, 2])
def test_infmasking_step_equals_reference_formulation(n_layers):
    """Same weights, same masks: fast method == reference loops + explicit covariance, loss, grads, BN stats."""
    torch.manual_seed(0)
    mods = [MOD_TAB, MOD_SEQ]
    cfg = make_cfg("infmasking", mods, n_layers=n_layers, mask_all_subsets=True, num_mask=4)
    fast = build_method(cfg).double()
    ref = copy.deepcopy(fast)
    batch = make_batch(mods, B=5, dtype=torch.float64)
    B, lengths = 5, [10, 6]
    subsets = fast.encoder.subsets()
    keep = [random_keep_mask(4, 2 * B, [lengths[m] for m in s], 0.5) for s in subsets]
    out = fast.compute_loss(batch, keep=keep)
    expect = reference_step(ref, batch, keep1=[k[:, :B] for k in keep], keep2=[k[:, B:] for k in keep])
    assert abs(out["loss"].item() - expect["loss"].item()) < 1e-10
    for k in expect:      # the reference's accuracies are float32 whatever the input dtype
        assert abs(float(torch.as_tensor(out[k]).detach()) - float(expect[k].detach())) < \
            (1e-4 if "acc" in k else 1e-10), k
    out["loss"].backward()
    expect["loss"].backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-9), name
    for (name, a), b in zip(fast.head.state_dict().items(), ref.head.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), atol=1e-12), name


def test_comm_has_no_mask_token_and_bad_mask_ratio_is_rejected():
    comm = build_method(make_cfg("comm", [MOD_TAB, MOD_SEQ]))
    assert comm.encoder.fusion.mask_token is None
    assert all("mask_token" not in n for n, _ in comm.named_parameters())
    with pytest.raises(ValueError, match="ratio"):
        build_method(make_cfg("infmasking", [MOD_TAB, MOD_SEQ], mask_ratio=1.0))


def test_mask_ratio_reads_trainer_state():
    model = build_method(make_cfg("infmasking", [MOD_TAB, MOD_SEQ], mask_lambda=2.0))
    assert model.mask_ratio_r() == 2.0            # no trainer: lambda

    class FakeTrainer:
        max_epochs, current_epoch = 10, 4

    model._trainer = FakeTrainer()
    assert model.mask_ratio_r() == pytest.approx(2.0 * 5 / 10)
    model._trainer = None


def test_non_finite_loss_raises():
    mods = [MOD_TAB, MOD_SEQ]
    model = build_method(make_cfg("comm", mods))
    batch = make_batch(mods)
    batch["views"][0][0] = batch["views"][0][0] * float("nan")
    with pytest.raises(NonFiniteLossError):
        model.training_step(batch, 0)


class NaNFrom(RandomSSL):
    """RandomSSL whose samples from index `first` on carry a NaN (batch `first // batch size` onwards)."""

    def __init__(self, mods, first, n=16):
        super().__init__(mods, n)
        self.first = first

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if i >= self.first:
            item["views"][0][1] = item["views"][0][1] * float("nan")
        return item


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")  # no val on purpose
@pytest.mark.parametrize("every_step, where", [(True, "is nan at epoch 0, batch 1"),
                                               (False, "non-finite at epoch 0, between batch 0 and batch 2")])
def test_non_finite_loss_stops_the_trainer(every_step, where):
    """Every step (a CPU's default): at the batch itself, before its update. Otherwise (an accelerator's default,
    no host sync per step): on the next logging step, log_every_n_steps=3 here, naming the batches in between; the
    non-finite update has been applied by then."""
    mods = [MOD_TAB, MOD_SEQ]
    model = build_method(make_cfg("comm", mods))
    model.finite_check_every_step = every_step
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=3,
                         num_sanity_val_steps=0, limit_val_batches=0)
    with pytest.raises(NonFiniteLossError, match=where):
        trainer.fit(model, DataLoader(NaNFrom(mods, first=4), batch_size=4))
    # raised inside the batch's training step: batch 1 was never applied, or (late) batches 0 and 1 were
    assert trainer.global_step == (1 if every_step else 2)
    assert all(torch.isfinite(p).all() for p in model.parameters()) == every_step


def test_checkpoint_carries_plain_config(tmp_path):
    cfg = make_cfg("infmasking", [MOD_TAB, MOD_SEQ])
    model = build_method(cfg)
    ckpt = {}
    model.on_save_checkpoint(ckpt)
    assert ckpt["infmask_config"] == cfg
    path = tmp_path / "c.pt"
    torch.save({"state_dict": model.state_dict(), **ckpt}, path)
    loaded = torch.load(path, weights_only=True)
    again = build_method(loaded["infmask_config"])
    again.load_state_dict(loaded["state_dict"])


def test_build_method_rejects_unknown_method():
    with pytest.raises(ValueError, match="cmc.*comm.*cross.*cross_self.*infmasking"):
        build_method(make_cfg("simclr", [MOD_TAB, MOD_SEQ]))
    with pytest.raises(ValueError, match="modalities"):
        build_method(make_cfg("comm", [MOD_TAB]))


def test_weight_decay_groups_of_infmasking():
    model = build_method(make_cfg("infmasking", [MOD_IMAGE, MOD_TAB]))
    groups = model.configure_optimizers()["optimizer"].param_groups
    decayed = {n for n, p in model.named_parameters() if any(p is q for q in groups[0]["params"])}
    expected = {n for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("bias")}
    assert decayed == expected
    assert "encoder.adapters.1.weight" in decayed and "encoder.adapters.1.bias" not in decayed
    assert {"encoder.fusion.cls_token", "encoder.fusion.mask_token"} <= decayed


def test_no_cuda_calls_in_code_base():
    pattern = re.compile(r"\.cuda\(\)")
    offenders = [str(p.relative_to(ROOT)) for d in ("pipeline", "models", "data") if (ROOT / d).exists()
                 for p in (ROOT / d).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_on_the_batch_parts_it_declares(name):
    """The datamodules build only `batch_inputs` of an SSL batch (no augmentation for Cross and CMC, no
    un-augmented copy for CoMM and InfMasking): the loss must need nothing else."""
    mods = [MOD_TAB, MOD_PROPRIO]
    method = build_method(make_cfg(name, mods))
    assert set(method.batch_inputs) <= {"views", "x"} and method.batch_inputs
    batch = {k: v for k, v in make_batch(mods, B=6).items() if k in method.batch_inputs}
    assert torch.isfinite(method.compute_loss(batch)["loss"])


def test_trifeatures_ssl_batches_hold_only_the_requested_parts():
    from infmask.data.trifeatures_datamodule import TrifeaturesDataModule

    dm = TrifeaturesDataModule(Path("unused"), batch_size=4, image_size=32, check_integrity=False)
    raw = {"raw": [torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8) for _ in range(2)]}
    assert set(dm.transform_batch(dict(raw))) == {"views", "x"}
    for parts in (("x",), ("views",)):
        dm.ssl_inputs = parts
        out = dm.transform_batch(dict(raw))
        assert set(out) == set(parts)
    probe = dm.transform_batch({**raw, "y": {"share": torch.zeros(4)}})
    assert set(probe) == {"x", "y"}  # probe batches always carry the un-augmented input
