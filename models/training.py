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


def _labels(
    table: pa.Table, label: str, heads: list[str], head_labels: dict | None, preset: str
) -> np.ndarray:
    """float32 targets: [N] from the `label` column, or [N, heads] from `head_labels` in head order."""
    if not heads:
        return table.column(label).to_numpy(zero_copy_only=False).astype(np.float32)
    missing = [h for h in heads if h not in (head_labels or {})]
    if missing:
        raise ValueError(f"preset {preset!r} needs a label per head; missing {missing}")
    return np.stack([np.asarray(head_labels[h], dtype=np.float32) for h in heads], axis=1)


def _predict_split(model, cat, dense, hold: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, ...]:
    """Probabilities on the holdout and on (up to 200 k of) the training rows, and the model's
    own outputs on the holdout (what scoring writes: probabilities, heads or vectors)."""
    import torch

    with torch.inference_mode():
        h = torch.from_numpy(hold)
        p_hold = torch.sigmoid(model.logits(cat[h], dense[h])).numpy()
        t = torch.from_numpy(train[: min(len(train), 200_000)])
        p_train = torch.sigmoid(model.logits(cat[t], dense[t])).numpy()
        out_hold = model(cat[h], dense[h]).numpy()
    return p_hold, p_train, out_hold


def _metrics(
    y: np.ndarray,
    hold: np.ndarray,
    train: np.ndarray,
    p_hold: np.ndarray,
    p_train: np.ndarray,
    heads: list[str],
) -> dict[str, float | int]:
    """AUCs and rates of the first head (or the one output), then each further head's holdout AUC."""
    first = (lambda a: a[:, 0]) if heads else (lambda a: a)
    metrics = {
        "holdout_auc": round(auc(first(y[hold]), first(p_hold)), 4),
        "train_auc": round(auc(first(y[train[: len(p_train)]]), first(p_train)), 4),
        "holdout_rows": len(hold),
        "train_rows": len(train),
        "positive_rate": round(float(first(y).mean()), 4),
        "holdout_score_mean": round(float(first(p_hold).mean()), 4),
    }
    for i, head in enumerate(heads[1:], start=1):
        metrics[f"holdout_auc_{head}"] = round(auc(y[hold][:, i], p_hold[:, i]), 4)
    return metrics


def _references(out_hold: np.ndarray, heads: list[str]) -> tuple[dict, dict[str, dict] | None]:
    """The held-out outputs' profile: the reference that scored dates are compared with (drift
    check). An embedding's is of its vectors' norms, as the run profiles embeddings; with heads,
    one per head, the first also the model's reference."""
    from models.scoreprofile import profile_array

    if out_hold.ndim == 2 and not heads:
        return profile_array(np.linalg.norm(out_hold.astype(np.float64), axis=1)), None
    if heads:
        references = {head: profile_array(out_hold[:, i]) for i, head in enumerate(heads)}
        return references[heads[0]], references
    return profile_array(out_hold), None


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
    y = _labels(table, label, heads, head_labels, preset)
    perm = rng.permutation(len(y))
    n_hold = int(len(y) * holdout)
    hold, train = perm[:n_hold], perm[n_hold:]
    cat, dense = torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"])
    if batch_size is None:  # enough optimizer steps on small data, big batches on large data
        batch_size = int(np.clip(len(train) // 100, 128, 2048))
    kwargs = {
        "buckets": [f.buckets for f in spec.categorical],
        "num_dense": len(spec.dense),
        **(model_kwargs or {}),
    }
    model = build_dlrm(preset=preset, **kwargs)
    _fit(model, (cat, dense, torch.from_numpy(y)), train, epochs, batch_size, lr, rng)
    p_hold, p_train, out_hold = _predict_split(model, cat, dense, hold, train)
    reference, references = _references(out_hold, heads)
    return TrainResult(
        model=model,
        spec=spec,
        metrics=_metrics(y, hold, train, p_hold, p_train, heads),
        architecture={"builtin": "dlrm", "preset": preset, "kwargs": kwargs},
        score_reference=reference,
        score_references=references,
    )
