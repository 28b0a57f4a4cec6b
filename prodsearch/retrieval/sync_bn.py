"""BatchNorm over the whole batch when several processes each hold a share of it.

A layer that trains its statistics (the embedding head's BatchNorm always; the backbone's with
``--no-freeze-bn``) must normalise with the statistics of the whole batch, as one process would,
not of its own share. On GPUs that is timm's ``convert_sync_batchnorm`` (torch's SyncBatchNorm,
keeping timm's fused BatchNorm + activation layers). torch's SyncBatchNorm computes its statistics
with CUDA kernels only, so processes on CPUs (gloo) use :class:`CrossProcessBatchNorm`, the same
arithmetic with a differentiable all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
import torch.distributed._functional_collectives as funcol  # differentiable collectives (torch's advice)


class CrossProcessBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` (batch x features) whose training statistics are those of the batch over
    every process; in eval mode, or outside a process group, plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        x32 = x.float()
        local = torch.cat([x32.sum(0), (x32 * x32).sum(0), x32.new_full((1,), len(x))])
        stats = funcol.wait_tensor(funcol.all_reduce(local, "sum", dist.group.WORLD))
        features = x.shape[1]
        n = stats[-1]
        mean = stats[:features] / n
        var = (stats[features:2 * features] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1).clamp_min(1))
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm computing whole-batch statistics across the processes:
    every one on GPUs; on CPUs the 1-d ones (the head's; the backbone's stay frozen there)."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm1d:
                synced = CrossProcessBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                               child.track_running_stats)
                synced.load_state_dict(child.state_dict())
                setattr(parent, name, synced.to(child.weight.device if child.affine else "cpu"))
    return model
