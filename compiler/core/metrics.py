"""Ranking metrics shared by training and verification (numpy and scipy only)."""

import numpy as np
from scipy.stats import kendalltau, rankdata


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) formula, ties averaged; NaN if one class is absent."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b of two score lists for the same candidates; 1.0 for a single candidate or all ties."""
    if len(a) < 2:
        return 1.0
    tau = kendalltau(a, b).statistic
    return 1.0 if np.isnan(tau) else float(tau)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Fraction of the top-k candidates by `a` that are also in the top-k by `b`."""
    k = min(k, len(a))
    return len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k])) / k
