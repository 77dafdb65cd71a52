"""Training for the built-in model. Uses `models.features.transform_table`: the CPU half and the
torch half of the transforms the scoring pipeline splits between its preprocess tasks and its
replicas (models.transforms), run here on the CPU, so training and scoring tensors are identical
for the same rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.features import FeatureSpec, fit_dense_stats, record_types, transform_table


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the rank-sum formula (ties get average ranks)."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class TrainResult:
    model: object
    spec: FeatureSpec
    metrics: dict[str, float]
    architecture: dict
    score_reference: dict | None = None
    score_references: dict | None = None  # head -> profile (preset `heads`)


def _fit(model, tensors, train: np.ndarray, epochs: int, batch_size: int, lr: float, rng) -> None:
    """Adam on the logits with binary cross-entropy, over shuffled mini-batches of `train` rows."""
    import torch

    cat, dense, target = tensors
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        rng.shuffle(train)
        for i in range(0, len(train), batch_size):
            idx = torch.from_numpy(train[i : i + batch_size])
            opt.zero_grad()
            loss = loss_fn(model.logits(cat[idx], dense[idx]), target[idx])
            loss.backward()
            opt.step()
    model.eval()


def train_dlrm(
    table: pa.Table,
    spec: FeatureSpec,
    label: str,
    *,
    preset: str = "dlrm-demo",
    epochs: int = 2,
    batch_size: int | None = None,
    lr: float = 3e-3,
    holdout: float = 0.2,
    seed: int = 0,
    head_labels: dict[str, np.ndarray] | None = None,
    model_kwargs: dict | None = None,
) -> TrainResult:
    """Train a built-in preset. `head_labels` (preset `heads`): one 0/1 label per head, in the
    preset's head order; `model_kwargs`: extra constructor arguments (the two-tower's feature
    indices), recorded in the checkpoint's architecture."""
    import torch

    from models.dlrm import PRESETS, build_dlrm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # the statistics and the column types the model learns from go into its checkpoint's spec
    spec = record_types(table, fit_dense_stats(table, spec))
    feats = transform_table(table, spec)
    heads = list(PRESETS.get(preset, {}).get("heads", []))
    if heads:
        missing = [h for h in heads if h not in (head_labels or {})]
        if missing:
            raise ValueError(f"preset {preset!r} needs a label per head; missing {missing}")
        y = np.stack([np.asarray(head_labels[h], dtype=np.float32) for h in heads], axis=1)
    else:
        y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    n = len(y)
    perm = rng.permutation(n)
    n_hold = int(n * holdout)
    hold, train = perm[:n_hold], perm[n_hold:]
    cat = torch.from_numpy(feats["cat"])
    dense = torch.from_numpy(feats["dense"])
    target = torch.from_numpy(y)
    if batch_size is None:  # enough optimizer steps on small data, big batches on large data
        batch_size = int(np.clip(len(train) // 100, 128, 2048))
    buckets = [f.buckets for f in spec.categorical]
    kwargs = {"buckets": buckets, "num_dense": len(spec.dense), **(model_kwargs or {})}
    arch = {"builtin": "dlrm", "preset": preset, "kwargs": kwargs}
    model = build_dlrm(preset=preset, **kwargs)
    _fit(model, (cat, dense, target), train, epochs, batch_size, lr, rng)
    with torch.inference_mode():
        h = torch.from_numpy(hold)
        p_hold = torch.sigmoid(model.logits(cat[h], dense[h])).numpy()
        t = torch.from_numpy(train[: min(len(train), 200_000)])
        p_train = torch.sigmoid(model.logits(cat[t], dense[t])).numpy()
        out_hold = model(cat[h], dense[h]).numpy()
    first = (lambda a: a[:, 0]) if heads else (lambda a: a)
    metrics = {
        "holdout_auc": round(auc(first(y[hold]), first(p_hold)), 4),
        "train_auc": round(auc(first(y[train[: len(p_train)]]), first(p_train)), 4),
        "holdout_rows": int(n_hold),
        "train_rows": int(len(train)),
        "positive_rate": round(float(first(y).mean()), 4),
        "holdout_score_mean": round(float(first(p_hold).mean()), 4),
    }
    for i, head in enumerate(heads[1:], start=1):
        metrics[f"holdout_auc_{head}"] = round(auc(y[hold][:, i], p_hold[:, i]), 4)
    from models.scoreprofile import profile_array

    # held-out outputs: the reference that scored dates are compared with (drift check); an
    # embedding's is of its vectors' norms, as the run profiles embeddings
    if out_hold.ndim == 2 and not heads:
        reference = profile_array(np.linalg.norm(out_hold.astype(np.float64), axis=1))
        references = None
    elif heads:
        references = {head: profile_array(out_hold[:, i]) for i, head in enumerate(heads)}
        reference = references[heads[0]]
    else:
        reference, references = profile_array(out_hold), None
    return TrainResult(
        model=model,
        spec=spec,
        metrics=metrics,
        architecture=arch,
        score_reference=reference,
        score_references=references,
    )
