"""The paper's batch Dice loss, pooled over every process's samples under ``torchrun``.

The paper trains with one soft Dice over the whole batch (the authors' code; MONAI's
``DiceLoss(sigmoid=True, batch=True, smooth_nr=1, smooth_dr=1)``). Under DistributedDataParallel
each process sees only its own B slices: MONAI's loss there pools over those, DDP averages the N
processes' gradients, and the run trains on the mean of N B-slice Dice losses, which is not the one
N x B-slice batch Dice (Dice is a ratio of sums: the mean of ratios is not the ratio of the sums).
:class:`BatchDiceLoss` sums the Dice's sums over all processes before the ratio, so every process
computes that one global loss, and its gradients are those of a single process with batch N x B.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.loss import _Loss

__all__ = ["BatchDiceLoss", "summed_over_processes"]


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce(SUM)`` with gradients: what ``torch.distributed.nn.functional.all_reduce`` does
    (deprecated in torch 2.13, with a FutureWarning in every training process), and its
    replacement in ``_functional_collectives`` has no backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # d(sum_r s_r)/ds_k is 1 for every rank's output: rank k's input gets all ranks' gradients
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def summed_over_processes(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """``tensor`` summed over the processes of ``group`` (default: all), with gradients; ``tensor``
    itself without an initialised process group of several processes.

    Every process must call it, the same number of times (it is a collective). Backward sums the
    upstream gradients over the processes too: with ``L = f(S)``, ``S = sum_r s_r`` the same on
    every rank, each rank's ``s_r`` receives ``N f'(S)``, which DDP's mean over the ranks' parameter
    gradients divides by N again, leaving exactly ``dL/dtheta`` (tested against one process).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return tensor
    return _SumOverProcesses.apply(tensor, group)


class BatchDiceLoss(_Loss):
    """Soft Dice loss pooled over the batch and the spatial axes, and over all processes.

    In one process it is MONAI's ``DiceLoss(batch=True)`` with the same ``sigmoid``, ``smooth_nr``
    and ``smooth_dr`` (one Dice per channel, averaged over the channels); under an initialised
    process group of several processes (``torchrun`` with DDP), the intersection and the two sums
    of each channel are summed over the processes before the ratio (:func:`summed_over_processes`),
    so every process computes the Dice of the global batch, and DDP's averaged gradients are those
    of one process with every process's samples in its batch. The sums are taken in float32 (or
    the input's wider type), also under bf16 autocast.

    Args:
        sigmoid: apply a sigmoid to the input (logits), as the bundles do.
        smooth_nr: added to the numerator ``2 * intersection``.
        smooth_dr: added to the denominator ``sum(probabilities) + sum(target)``.
        group: the process group to pool over; None: all processes.

    Example::

        >>> loss = BatchDiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)
        >>> value = loss(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))  # probabilities 0.5
        >>> round(value.item(), 4)  # 1 - (2 * 16 + 1) / (16 + 32 + 1)
        0.3265
    """

    def __init__(
        self, sigmoid: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, group=None
    ) -> None:
        super().__init__()
        self.sigmoid = bool(sigmoid)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.group = group

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape != input.shape:
            raise ValueError(
                f"BatchDiceLoss: the target's shape {tuple(target.shape)} differs from the input's "
                f"{tuple(input.shape)}"
            )
        # bf16 network outputs: sums over a batch of slices need float32's precision
        dtype = torch.promote_types(input.dtype, torch.float32)
        probs = input.to(dtype)
        probs = torch.sigmoid(probs) if self.sigmoid else probs
        target = target.to(dtype)
        axes = [0, *range(2, input.ndim)]  # all but the channels
        sums = torch.stack([(probs * target).sum(axes), probs.sum(axes), target.sum(axes)])
        intersection, predicted, labelled = summed_over_processes(sums, self.group)
        dice = (2.0 * intersection + self.smooth_nr) / (predicted + labelled + self.smooth_dr)
        return (1.0 - dice).mean()
