"""Statistics the protocols and proofs report: ROC AUC of verification pairs, the Fréchet distance between
feature sets (and its spread over a block bootstrap), and Pearson correlation."""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def pair_auc(embeddings: torch.Tensor, labels: list, groups: list | None = None) -> float:
    """ROC AUC of cosine similarity for same-label versus different-label pairs (pairs within one
    ``group``, e.g. two frames of one clip, are left out)."""
    from scipy.stats import rankdata

    sims = (embeddings.float() @ embeddings.float().T).numpy()
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    keep = np.triu(np.ones_like(same), k=1).astype(bool)
    if groups is not None:
        groups = np.asarray(groups)
        keep &= groups[:, None] != groups[None, :]
    positive, scores = same[keep], sims[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        logger.warning("ROC AUC is undefined with %d same and %d different pairs (a split with one identity?); "
                       "evaluate on at least two identities, each in two clips or more", n_pos, n_neg)  # fmt: skip
        return float("nan")
    # Mann-Whitney: the probability that a same pair scores above a different pair (ties count half)
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a [N, D]`` and ``b [M, D]``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        eps = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = root.real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def frechet_block_sd(a: np.ndarray, b: np.ndarray, block: int, draws: int = 100, seed: int = 0,
                     minus: np.ndarray | None = None) -> float:  # fmt: skip
    """Spread of ``frechet_distance(a, b)`` over a moving-block bootstrap of ``a``: ``a``'s rows are consecutive
    frames, so they are resampled in runs of ``block`` (one chunk keeps the frames that depend on each other
    together). The standard deviation over ``draws`` resamples; ``b`` (the reference) stays fixed.

    With ``minus`` (rows aligned with ``a``'s: the same frames made by another model), the spread of the
    difference ``frechet_distance(a, b) - frechet_distance(minus, b)``, both resampled at the same rows: a
    paired comparison, which sees through what the two share (the clips, the motion of each frame)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    if n < 2 * block:
        raise ValueError(
            f"{n} feature rows are too few to resample in blocks of {block}; use a smaller block."
        )
    if minus is not None and len(minus) != n:
        raise ValueError(f"A paired spread needs aligned rows: {n} against {len(minus)}.")
    starts = np.arange(n - block + 1)
    per_draw = -(-n // block)
    values = []
    for _ in range(draws):
        rows = (rng.choice(starts, per_draw)[:, None] + np.arange(block)).reshape(-1)[:n]
        value = frechet_distance(a[rows], b)
        if minus is not None:
            value -= frechet_distance(minus[rows], b)
        values.append(value)
    return float(np.std(values, ddof=1))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the entries where both are finite (NaN when either is constant there)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
