"""MSDSMetric over batches split across processes, synced by torchmetrics itself.

Run by tests/test_torchmetrics.py as `torchrun --nproc_per_node 2 tests/metric_sync.py OUT`
(gloo, CPU); each rank updates with its own share of the batches, and rank 0
saves what compute() returns after torchmetrics' sync.
"""

import sys

import torch
import torch.distributed as dist

from msds.torchmetrics import MSDSMetric


def batches():
    """Batches of different sizes, shapes and image sizes; the same on every rank."""
    generator = torch.Generator().manual_seed(3)
    for batch, x_size, y_size in ((3, (32, 32), (32, 40)), (1, (48, 32), (32, 32)), (2, (32, 36), (40, 32)),
                                  (2, (32, 32), (32, 32))):
        target = torch.rand(batch, 3, *y_size, generator=generator)
        preds = torch.rand(batch, 3, *x_size, generator=generator)
        yield preds, target


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    metric = MSDSMetric(levels=2, weights=None)
    for index, (preds, target) in enumerate(batches()):
        if index % world == rank:
            metric.update(preds, target)
    value = metric.compute()
    if rank == 0:
        torch.save({"value": value, "world": world}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
