"""Distillation: a teacher's 8-view answers on the training tiles, computed once, as soft targets for any view."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SoftTargets:
    """A teacher's logits for each training tile, and how much of the loss they take.

    The logits are the mean over the 8 flips and right-angle rotations of the whole tile, which no
    D4 view changes: they are the right target for whichever view of the tile a batch holds.
    """

    logits: torch.Tensor  # (N, C) float32 on the CPU, in the order of the training tensor
    weight: float  # the teacher's share of the loss; the labels' cross-entropy has the rest
    temperature: float

    def probabilities(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The teacher's softened probabilities of the training tiles at `index`."""
        return (self.logits[index].to(device) / self.temperature).softmax(dim=1)

    def loss(self, logits: torch.Tensor, index: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
        """The student's loss against the teacher for a batch of the tiles at `index`.

        With mixup or CutMix (`lam` < 1, the batch mixed with its reverse), the targets are mixed alike.
        """
        target = self.probabilities(index, logits.device)
        if lam < 1.0:
            target = lam * target + (1 - lam) * target.flip(0)
        return soft_cross_entropy(logits, target, self.temperature)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the student's softened answer against the teacher's probabilities, times T squared.

    It differs from the KL divergence by the teacher's entropy, a constant, so the gradients are the
    same; the T squared keeps their size independent of the temperature (Hinton et al., 2015).
    """
    return -(target * F.log_softmax(logits.float() / temperature, dim=1)).sum(dim=1).mean() * temperature ** 2
