"""Linear probes, with the evaluation protocol kept honest.

Protocol ("clean", the default): the regularisation is chosen on the validation split, the probe is refit on
train+val, and the test split is scored exactly once, at the end. Functions that choose (`select_and_fit`) never
receive test data; `evaluate` is the only place test labels are read.

Deviations from the reference, on purpose:
- features are z-scored with the statistics of the rows a probe is fitted on (`probe.standardize`, default on;
  the reference probes raw features): with lbfgs capped at max_iter iterations, short CPU runs' low-variance
  features otherwise left the probe unconverged near chance (measured: shape 17% raw vs 38% at C=1e4);
- single-label probes are scikit-learn's multinomial LogisticRegression (squared L2 penalty, lbfgs), not the
  reference's torch L-BFGS with a non-squared Frobenius penalty; the cost grid and bisection search are the reference's.
Kept as the reference: no class weighting, so a weak signal on an imbalanced task (Trifeatures synergy, ~10 %
positives) is scored at chance by balanced accuracy; its AUROC, also recorded, tells a weak signal from none.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

TASK_KINDS = ("multiclass", "binary", "multilabel", "regression")
PRIMARY = {"multiclass": ("acc1", "max"), "binary": ("acc1", "max"), "multilabel": ("f1_mean", "max"),
           "regression": ("mse", "min")}


@torch.no_grad()
def extract_features(model, datamodule, split: str, device, max_samples: int | None = None):
    """Pre-head fused features on un-augmented inputs of one probe split, in eval mode.
    Returns (X [N, D] float32, {task: y})."""
    was_training = model.training
    model.eval()
    xs, ys, n = [], {}, 0
    try:
        for batch in datamodule.probe_batches(split, device):
            feats = model.features(batch["x"]).float().cpu()
            xs.append(feats.flatten(1))
            for task, y in batch["y"].items():
                ys.setdefault(task, []).append(y.cpu())
            n += feats.shape[0]
            if max_samples is not None and n >= max_samples:
                break
    finally:
        model.train(was_training)
    X = torch.cat(xs).numpy()
    Y = {t: torch.cat(v).numpy() for t, v in ys.items()}
    if max_samples is not None:
        X, Y = X[:max_samples], {t: v[:max_samples] for t, v in Y.items()}
    return X, Y


# -------------------------------------------------------------------------------------------- models

class _ConstantColumn:
    """A multilabel column with one class in the training rows (rare genres in small subsets): predict it."""

    def __init__(self, value):
        self.value = int(value)
        self.classes_ = np.array([0, 1])

    def predict(self, X):
        return np.full(len(X), self.value)

    def predict_proba(self, X):
        p = np.zeros((len(X), 2))
        p[:, self.value] = 1.0
        return p


class _Multilabel:
    """One binary logistic regression per label (MultiOutputClassifier semantics), tolerant of constant columns."""

    def __init__(self, cost: float, max_iter: int):
        self.cost, self.max_iter = cost, max_iter

    def fit(self, X, Y):
        from sklearn.linear_model import LogisticRegression

        Y = np.asarray(Y)
        self.estimators_ = [LogisticRegression(C=self.cost, max_iter=self.max_iter).fit(X, Y[:, j])
                            if len(np.unique(Y[:, j])) > 1 else _ConstantColumn(Y[0, j]) for j in range(Y.shape[1])]
        return self

    def predict(self, X):
        return np.stack([e.predict(X) for e in self.estimators_], axis=1)


def _fit(kind: str, X, y, cost: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression, Ridge
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these are small problems, and with 2 threads on a busy 2-core machine OpenBLAS
    # spin-waiting made lbfgs 10-27x slower (measured).
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore")  # lbfgs convergence warnings at max_iter, as in the reference
        if kind in ("multiclass", "binary"):
            return LogisticRegression(C=cost, max_iter=max_iter).fit(X, y)
        if kind == "multilabel":
            return _Multilabel(cost, max_iter).fit(X, y)
        if kind == "regression":
            return Ridge(alpha=cost, max_iter=max_iter).fit(X, y)
    raise ValueError(f"kind: unknown task kind {kind!r}; valid: {', '.join(TASK_KINDS)}")


def score(kind: str, model, X, y) -> dict[str, float]:
    """All metrics of a fitted probe on (X, y). Classification acc1 is balanced accuracy (the paper's metric):
    macro-averaged recall over the classes present in y."""
    import torchmetrics.functional as TF

    if kind in ("multiclass", "binary"):
        proba = model.predict_proba(X)
        classes = model.classes_
        pred = classes[proba.argmax(1)]
        present = np.unique(y)
        remap = {c: i for i, c in enumerate(present)}
        # predictions of classes absent from y count as errors: map them past the present classes
        p_idx = torch.tensor([remap.get(c, len(present)) for c in pred])
        y_idx = torch.tensor([remap[c] for c in y])
        k = len(present) + 1
        acc1 = TF.classification.multiclass_recall(p_idx, y_idx, num_classes=k, average="none")[:len(present)].mean()
        out = {"acc1": float(acc1), "acc": float((pred == y).mean())}
        if len(present) >= 2:
            if len(classes) == 2:
                out["roc_auc"] = float(TF.auroc(torch.tensor(proba[:, 1]), torch.tensor((y == classes[1]).astype(int)),
                                                task="binary"))
            elif set(present) <= set(classes):
                col = {c: i for i, c in enumerate(classes)}
                yc = torch.tensor([col[c] for c in y])
                out["roc_auc"] = float(TF.auroc(torch.tensor(proba, dtype=torch.float32), yc, task="multiclass",
                                                num_classes=len(classes), average="macro"))
        return out
    if kind == "multilabel":
        pred = torch.tensor(model.predict(X)).int()
        target = torch.tensor(y).int()
        nl = target.shape[1]
        return {
            "f1_mean": float(TF.f1_score(pred, target, task="multilabel", num_labels=nl, average="macro")),
            "f1_weighted": float(TF.f1_score(pred, target, task="multilabel", num_labels=nl, average="weighted")),
            "acc1": float(TF.accuracy(pred, target, task="multilabel", num_labels=nl, average="macro")),
            "acc1_subset": float((pred == target).all(1).float().mean()),
        }
    if kind == "regression":
        pred = np.asarray(model.predict(X), dtype=np.float64).reshape(len(X), -1)
        yy = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
        mse = float(((pred - yy) ** 2).mean())
        ss_res = ((pred - yy) ** 2).sum(0)
        ss_tot = ((yy - yy.mean(0)) ** 2).sum(0)
        r2 = float(np.mean(1 - ss_res / np.maximum(ss_tot, 1e-12)))
        pr = [np.corrcoef(pred[:, j], yy[:, j])[0, 1] if pred[:, j].std() > 0 and yy[:, j].std() > 0 else 0.0
              for j in range(yy.shape[1])]
        return {"mse": mse, "r2": r2, "pearson_r": float(np.mean(pr))}
    raise ValueError(f"kind: unknown task kind {kind!r}; valid: {', '.join(TASK_KINDS)}")


# -------------------------------------------------------------------------------------------- selection

def search_cost(evaluate_cost, costs, fastsearch: bool, goal: str = "max") -> tuple[float, dict]:
    """the reference: coarse grid, then (unless fastsearch) bisection over 29 log-spaced values around the best.
    `evaluate_cost(c) -> score` is called at most once per cost; the first best wins."""
    cache: dict[float, float] = {}
    better = (lambda a, b: a > b) if goal == "max" else (lambda a, b: a < b)

    def ev(c):
        if c not in cache:
            cache[c] = evaluate_cost(c)
        return cache[c]

    def first_best(values):
        j = 0
        for i, v in enumerate(values):
            if better(v, values[j]):
                j = i
        return j

    coarse = [ev(c) for c in costs]
    best = costs[first_best(coarse)]
    if not fastsearch:
        lo, hi = min(costs), max(costs)
        grid = [float(c) for c in np.logspace(math.log10(best / 100), math.log10(best * 100), 29) if lo <= c <= hi]
        while len(grid) > 1:
            n = len(grid)
            idx = (n // 4, n // 2, (-n) // 4)  # the last counts from the end, as the reference's floor(-n/4)
            j = first_best([ev(grid[i]) for i in idx])
            grid = grid[: n // 2] if j == 0 else grid[n // 2:] if j == 2 else grid[n // 4: (-n) // 4]
        visited = list(cache)
        best = visited[first_best([cache[c] for c in visited])]
    return best, cache


@dataclass
class ProbeResult:
    cost: float
    val: dict[str, float]
    model: object


class Standardized:
    """A fitted probe that z-scores its inputs with the statistics of the data it was fitted on."""

    def __init__(self, model, mean, scale):
        self.model, self.mean, self.scale = model, mean, scale
        self.classes_ = getattr(model, "classes_", None)

    def _t(self, X):
        return (X - self.mean) / self.scale

    def predict(self, X):
        return self.model.predict(self._t(X))

    def predict_proba(self, X):
        return self.model.predict_proba(self._t(X))


def _stats(X):
    mean = X.mean(0, keepdims=True)
    return mean, np.maximum(X.std(0, keepdims=True), 1e-8)


def _fit_std(kind, X, y, cost, max_iter, standardize: bool):
    if not standardize:
        return _fit(kind, X, y, cost, max_iter)
    mean, scale = _stats(X)
    return Standardized(_fit(kind, (X - mean) / scale, y, cost, max_iter), mean, scale)


def select_and_fit(kind: str, train, val, costs, fastsearch: bool, max_iter: int,
                   standardize: bool = False) -> ProbeResult:
    """Choose the cost on (train -> val), then refit on train+val. Test data never enters here.
    With `standardize`, features are z-scored with the statistics of the rows each probe is fitted on."""
    (Xtr, ytr), (Xva, yva) = train, val
    metric, goal = PRIMARY[kind]
    fit = lambda X, y, c: _fit_std(kind, X, y, c, max_iter, standardize)  # noqa: E731
    best, cache = search_cost(lambda c: score(kind, fit(Xtr, ytr, c), Xva, yva)[metric], costs, fastsearch, goal)
    val_scores = score(kind, fit(Xtr, ytr, best), Xva, yva)
    model = fit(np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva]), best)
    return ProbeResult(best, val_scores, model)


def holdout_select_and_fit(kind: str, train, costs, fastsearch: bool, max_iter: int, seed: int = 48,
                           standardize: bool = False) -> ProbeResult:
    """The reference's per-epoch probe: choose the cost on a 60/40 hold-out of train (stratified for
    classification, 80/20 for regression), refit on all of train."""
    from sklearn.model_selection import train_test_split

    X, y = train
    frac = 0.2 if kind == "regression" else 0.4
    strat = y if kind in ("multiclass", "binary") and min(np.unique(y, return_counts=True)[1]) >= 2 else None
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=frac, random_state=seed, stratify=strat)
    metric, goal = PRIMARY[kind]
    fit = lambda X_, y_, c: _fit_std(kind, X_, y_, c, max_iter, standardize)  # noqa: E731
    best, _ = search_cost(lambda c: score(kind, fit(Xa, ya, c), Xb, yb)[metric], costs, fastsearch, goal)
    return ProbeResult(best, {}, fit(X, y, best))


def evaluate(kind: str, result: ProbeResult, test) -> dict[str, float]:
    X, y = test
    return score(kind, result.model, X, y)


def mean_over_tasks(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """The unsuffixed metric is the mean over tasks (what checkpointing monitors)."""
    keys = set.intersection(*(set(v) for v in per_task.values())) if per_task else set()
    return {k: float(np.mean([v[k] for v in per_task.values()])) for k in sorted(keys)}
