"""Two training steps of a small restorer with the MSDS loss, under torchrun.

Run by tests/test_loss.py as `torchrun --nproc_per_node 2 tests/ddp_step.py OUT`
(gloo, CPU) and in one plain process as `python tests/ddp_step.py OUT 2`, which
takes the two ranks' shares of the batch in turn and averages their gradients
as DDP does. Each process runs with the threads its environment gives it.
Rank 0 saves, at each step, the loss's gradient for the first share's
restored images and the restorer's gradients, and the loss's state.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import msds

BATCH = 4


class Restorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.1 * self.body(x)).clamp(0, 1)


class Training(nn.Module):
    """Restorer and loss in one module, so DDP also sees the loss's frozen weights."""

    def __init__(self) -> None:
        super().__init__()
        self.restorer = Restorer()
        self.loss = msds.MSDS(levels=2, weights=None, as_loss=True)
        self.loss_grads: list = []

    def forward(self, degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        restored = self.restorer(degraded)
        restored.register_hook(lambda grad: self.loss_grads.append(grad.clone()))
        return self.loss(restored, clean)


def main(out: str, shares: int = 1) -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, shares)
    torch.manual_seed(0)
    training = Training()
    model = nn.parallel.DistributedDataParallel(training) if distributed else training
    optimiser = torch.optim.SGD(training.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(BATCH, 3, 32, 32, generator=generator)
    degraded = (clean + 0.2 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    share = BATCH // world
    mine = [slice(r * share, (r + 1) * share) for r in ([rank] if distributed else range(world))]
    loss_state = {k: v.clone() for k, v in training.loss.state_dict().items()}
    grads = []
    for _ in range(2):
        optimiser.zero_grad()
        for part in mine:  # one share in a DDP process; each in turn, summed, in the single one
            model(degraded[part], clean[part]).backward()
        if not distributed:
            for p in training.restorer.parameters():
                p.grad /= world  # DDP averages over ranks
        grads.append({k: p.grad.clone() for k, p in training.restorer.named_parameters()})
        optimiser.step()
    if rank == 0:
        unchanged = all(torch.equal(v, loss_state[k]) for k, v in training.loss.state_dict().items())
        no_grads = all(p.grad is None for p in training.loss.parameters())
        loss_grads = training.loss_grads[:: len(mine)]  # the first share's, at each step
        torch.save({"grads": grads, "loss_grads": loss_grads, "loss_unchanged": unchanged,
                    "loss_no_grads": no_grads}, out)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
