"""Top-k accuracy, counted one way everywhere (evaluation, sweeps, re-ranking, training).

Labels below 0 mean "no label" (unlabelled photos, folder data) and are never counted."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["hits", "top_indices"]


def top_indices(logits: torch.Tensor, k: int = 5) -> np.ndarray:
    """The k highest classes of each row (fewer where there are fewer classes), best first."""
    logits = logits.detach().float().cpu()
    return logits.topk(min(k, logits.shape[1]), dim=1).indices.numpy()


def hits(top: np.ndarray, labels, k: int = 1) -> int:
    """Images whose label is among the first k of `top` (rows of top_indices); unlabelled skipped."""
    top = np.asarray(top)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    keep = labels >= 0
    return int((top[keep, :k] == labels[keep, None]).any(axis=1).sum())
