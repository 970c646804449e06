"""Training with torch DistributedDataParallel: the :class:`DDP` hook :func:`hqdb.train` takes
(``distributed=DDP()``), and :func:`train_distributed`, which runs it on Ray Train workers.

How one model is trained by several processes (each holding all the data):

- every rank draws the same split, seed and batch order, so batch t is the same everywhere;
- each rank runs its contiguous slice of the batch through the towers (wrapped in
  ``torch.nn.parallel.DistributedDataParallel``), and the slices are all-gathered, with autograd,
  into the whole batch: the loss each rank computes is the single process's loss over the batch
  (HQ's L_sim needs every cross-modal pair of the batch, not only those within a slice);
- backward: the gather's gradient is summed over the ranks (each computed the same loss), DDP
  averages the parameter gradients, so each step applies the single process's gradient of the
  whole batch (up to float summation order);
- the non-gradient steps — codebooks and ICM codes (§4.3), DCMH's B, validation and early
  stopping — run on rank 0 and are broadcast, so every rank keeps the same state.

Run it under torchrun (``torchrun --nproc-per-node 2 script.py`` where the script calls
``hqdb.train(data, distributed=DDP())`` after ``torch.distributed.init_process_group("gloo")``)
or with :func:`train_distributed` on Ray Train. Needs torch (the ``train`` extra).
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
from torch import nn

from ..errors import TrainingError

__all__ = ["DDP", "train_distributed"]


class _Gather(torch.autograd.Function):
    """All-gather of equal-sized slices, concatenated in rank order; backward: the sum over the
    ranks of the gradient of the whole (all-reduced), this rank's slice of it."""

    @staticmethod
    def forward(ctx, x):
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class _Towers(nn.Module):
    def __init__(self, towers: dict, extras: list):
        super().__init__()
        self.image, self.text = towers["image"], towers["text"]
        self.extras = nn.ModuleList(extras)  # used in the loss, after forward: their gradients are averaged too

    def forward(self, x_image, x_text):
        return self.image(x_image), self.text(x_text)


class DDP:
    """The hook :func:`hqdb.model.train.train` takes as ``distributed=``: DistributedDataParallel
    over the default torch process group (gloo on CPU), which must be initialised in every
    process before training (Ray Train and torchrun do it)."""

    def __init__(self):
        if not dist.is_available() or not dist.is_initialized():
            raise TrainingError(
                "distributed training needs an initialised torch process group "
                "(torch.distributed.init_process_group, as Ray Train and torchrun do)"
            )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.model: nn.Module | None = None

    def wrap(self, towers: dict, extras: list) -> None:
        # DDP broadcasts rank 0's parameters now (they are equal anyway: same seed).
        # The towers' buffers (input mean and scale) are constants: no sync before each forward.
        self.model = nn.parallel.DistributedDataParallel(_Towers(towers, extras), forward_sync_buffers=False)

    def forward(self, x_image: torch.Tensor, x_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The towers' outputs for the whole batch; this rank computes rows [start, stop) (the
        batch split in ``world`` contiguous slices, padded to equal size for the gather)."""
        assert self.model is not None, "wrap() first"
        n = x_image.shape[0]
        size = -(-n // self.world)
        start, stop = min(self.rank * size, n), min((self.rank + 1) * size, n)
        xi, xt = x_image[start:stop], x_text[start:stop]
        pad = size - (stop - start)
        if pad:
            xi = torch.cat([xi, x_image[:1].expand(pad, -1)]) if n else xi
            xt = torch.cat([xt, x_text[:1].expand(pad, -1)]) if n else xt
        f, g = self.model(xi, xt)
        f, g = _Gather.apply(f), _Gather.apply(g)
        keep = torch.cat(
            [torch.arange(r * size, r * size + max(0, min(size, n - r * size))) for r in range(self.world)]
        )
        return f[keep], g[keep]

    def on_rank0(self, fn):
        """``fn`` run on rank 0 only; every rank gets its result (broadcast as a Python object)."""

        def run(*args, **kwargs):
            box = [fn(*args, **kwargs) if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        return run


def _worker(config: dict) -> None:
    """One Ray Train worker: train with the DDP hook; rank 0 stores the model in an hqdb file and
    reports it as the checkpoint."""
    import ray.train

    import hqdb

    rank = ray.train.get_context().get_world_rank()
    kwargs = dict(config["kwargs"])
    kwargs["progress"] = bool(kwargs.get("progress", False)) and rank == 0
    model = hqdb.train(config["data"], distributed=DDP(), **kwargs)
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            with hqdb.connect(os.path.join(d, "model.hqdb")) as db:
                hqdb.save_model(db, "model", model)
            ray.train.report(
                {"train_seconds": model.config["metrics"]["train_seconds"]},
                checkpoint=ray.train.Checkpoint.from_directory(d),
            )
    else:
        ray.train.report({})


def train_distributed(data, *, num_workers: int = 2, use_gpu: bool = False, storage_path=None, **kwargs):
    """:func:`hqdb.train` on ``num_workers`` Ray Train workers with DistributedDataParallel
    (gloo backend on CPU; hqdb's trainer does not use GPUs, so ``use_gpu`` must stay False);
    ``kwargs`` as :func:`hqdb.train` takes them (``threads`` is per worker).
    Returns the trained :class:`hqdb.model.TrainedModel` (rank 0's; every rank holds the same).
    ``storage_path``: where Ray Train keeps its run directory (default: a temporary one)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    import hqdb

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise TrainingError(f"num_workers must be a positive integer, got {num_workers!r}")
    if use_gpu:
        raise TrainingError("hqdb.train runs its towers on the CPU: use_gpu=True would reserve GPUs it does not use")
    if "distributed" in kwargs:
        raise TrainingError("train_distributed sets distributed= itself")
    if not ray.is_initialized():
        ray.init()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"data": data, "kwargs": kwargs},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=RunConfig(storage_path=os.fspath(storage_path or tmp), name="hqdb-train"),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise TrainingError(f"distributed training ended without a model: {result.error}")
        with result.checkpoint.as_directory() as d, hqdb.connect(os.path.join(d, "model.hqdb"), readonly=True) as db:
            return hqdb.load_model(db, "model")
