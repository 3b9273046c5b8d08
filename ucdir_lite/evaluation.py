"""Cross-domain retrieval of a trained encoder: its features, the P@K / mAP report, and the
epoch the official code would report.

Evaluation never changes what a run learns: the run cache keys runs on the training code only
and records this module's and ``metrics``' version apart (``runcache.eval_version``), so an
edit here re-evaluates cached runs instead of retraining them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ucdir_lite.data import encode
from ucdir_lite.metrics import retrieval_report
from ucdir_lite.utils import resolve_device


def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(feats (N, D) on the CPU, labels (N,)) of every image of ``dataset`` in order
    (eval mode, no augmentation: pass a dataset with ``eval_transform``)."""
    device = resolve_device(str(device))
    feats, labels = encode(encoder, dataset, device, batch_size, num_workers)
    return feats.cpu(), labels.long()


def evaluate(
    encoder: nn.Module,
    dataset_a: Dataset,
    dataset_b: Dataset,
    ks: Sequence[int] = (50, 100, 200),
    device: str | torch.device = "cpu",
    in_domain: bool = True,
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Cross-domain retrieval report (book chapter 1): P@K and mAP for A->B and B->A (and A->A,
    B->B when ``in_domain``), via ``metrics.retrieval_report``."""
    feats_a, labels_a = extract_features(encoder, dataset_a, device, batch_size, num_workers)
    feats_b, labels_b = extract_features(encoder, dataset_b, device, batch_size, num_workers)
    return retrieval_report(feats_a, labels_a, feats_b, labels_b, ks=tuple(ks), in_domain=in_domain)


def label_selected_best(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluated epoch the official code would report: the highest mean over the two
    cross-domain directions of P@K at the first K (P@1 on Office-Home). The choice reads the
    labels of the very images it scores, so the figure is label-selected and optimistic; the
    package's own figure is the last epoch. None if no epoch was evaluated."""
    evaluated = [e for e in history if "metrics" in e]
    if not evaluated:
        return None

    def score(entry: dict[str, Any]) -> float:
        a_b, b_a = entry["metrics"]["A->B"], entry["metrics"]["B->A"]
        first = next(iter(a_b))
        return (a_b[first] + b_a[first]) / 2

    return max(evaluated, key=score)  # the first of equal scores, as the official strict '<'


__all__ = ["evaluate", "extract_features", "label_selected_best"]
