"""What survives the input pipeline: how well shape, texture and colour can be read from Trifeatures images at a
given resolution, clean and through the SSL augmentation.

A small supervised CNN (three linear heads on a pooled trunk) is trained on the 2400 train images and scored on the
200 test images (unseen attribute combinations), each of the four combinations of {clean, augmented} training x
{clean, augmented} scoring. Images either come from the 224 px set resized down (what `preprocess` does) or are
rendered at another size (`--render`, e.g. the target size itself, where the textures keep their 10 px period).

    python scripts/fidelity/legibility.py --size 64 --render 64 --blur-scale 0.29
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from infmask.data import trifeatures as tf
from infmask.data.augment import ImageSSLAugment, ImageProbeTransform
from infmask.models.encoders import ConvTrunk


def images(size: int, render: int):
    r = tf.Renderer(render)
    rng = np.random.default_rng(0)
    attrs = tf.triplet_attributes()
    is_test = np.zeros(len(attrs), dtype=bool)
    is_test[rng.choice(len(attrs), 200, replace=False)] = True
    out = {"train": ([], []), "test": ([], [])}
    for t, (s, x, c) in enumerate(attrs):
        split = "test" if is_test[t] else "train"
        for _ in range(1 if is_test[t] else 3):
            out[split][0].append(r.render(s, x, c, rng))
            out[split][1].append((s, x, c))
    res = {}
    for split, (im, a) in out.items():
        im = np.stack(im)
        im = tf.resize_images(im, size)
        res[split] = (torch.from_numpy(im), torch.tensor(a))
    return res


class Net(nn.Module):
    """The candidate SSL trunk (models.encoders.ConvTrunk), globally pooled, with one linear head per attribute."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(ConvTrunk(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleList([nn.Linear(self.trunk[0].out_dim, 10) for _ in range(3)])

    def forward(self, x):
        h = self.trunk(x)
        return [head(h) for head in self.heads]


def run(size, render, blur_scale, crop_min, epochs, seed):
    torch.manual_seed(seed)
    d = images(size, render)
    aug = ImageSSLAugment(size, scale=(crop_min, 1.0))
    if blur_scale != 1.0:
        blur = aug.ops[3]
        blur.sigma = (0.1 * blur_scale, 2.0 * blur_scale)
    clean = ImageProbeTransform(size)
    out = {}
    for train_aug in (False, True):
        torch.manual_seed(seed)
        net = Net()
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        xs, ys = d["train"]
        n = len(xs)
        steps = epochs * (n // 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
        net.train()
        for e in range(epochs):
            perm = torch.randperm(n)
            for b in range(n // 64):
                idx = perm[b * 64:(b + 1) * 64]
                x = aug(xs[idx]) if train_aug else clean(xs[idx])
                loss = sum(nn.functional.cross_entropy(o, ys[idx, k]) for k, o in enumerate(net(x)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        xt, yt = d["test"]
        for test_aug in (False, True):
            reps = 5 if test_aug else 1
            correct = torch.zeros(3)
            with torch.no_grad():
                for _ in range(reps):
                    x = aug(xt) if test_aug else clean(xt)
                    for k, o in enumerate(net(x)):
                        correct[k] += (o.argmax(1) == yt[:, k]).float().sum()
            acc = (100 * correct / (reps * len(xt))).tolist()
            out[f"train_{'aug' if train_aug else 'clean'}/test_{'aug' if test_aug else 'clean'}"] = {
                "shape": round(acc[0], 1), "texture": round(acc[1], 1), "colour": round(acc[2], 1)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--render", type=int, default=224,
                   help="render at this size, then resize to --size (the texture period is 10 px at this size)")
    p.add_argument("--blur-scale", type=float, default=1.0, help="multiply the blur sigma range (0.1, 2.0)")
    p.add_argument("--crop-min", type=float, default=0.08)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    res = run(a.size, a.render, a.blur_scale, a.crop_min, a.epochs, a.seed)
    print(json.dumps({"args": vars(a), "result": res, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
