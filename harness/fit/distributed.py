"""A trial on several processes: ``torchrun`` ranks training one model with DistributedDataParallel.

Only a process that torchrun (or ``harness trial --nproc``) started has a ``DistContext``; a
single-process trial never creates one, so none of this runs there. What each piece is for:

- ``from_env``: the process group (nccl on CUDA with each rank on ``cuda:LOCAL_RANK``, gloo on
  the CPU) with a timeout on every collective, so a rank whose peer died cannot wait forever;
- samplers: ``DistributedSampler`` for training (each rank an equal share, the last one padded,
  so every rank takes the same number of steps), ``ShardSampler`` for validation (rank r takes
  images r, r + world, ... with no padding, so every image counts exactly once);
- ``reduce_metrics``: the confusion matrix summed over the ranks before any metric is computed,
  which makes the val mIoU the single-process one over the same data;
- ``rank_findings``: every rank's optimiser groups compared with rank 0's (a rank that differs is
  a finding); ``gather_flags``: every rank's check verdicts, to rank 0;
- ``agree``: a stop decided on any rank (rank 0's pruner, a monitor) ends every rank at the same
  epoch; without it the others would wait in the next collective.

``batch_size`` stays per rank: N ranks train on N x train.batch_size images per step (recorded as
``runtime.global_batch_size``).
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

from harness.callbacks import StopTrial
from harness.checks.flags import ranks_differ
from harness.errors import ConfigError
from harness.faults import exit_if_rank_fault
from harness.fit.runtime import physical_device
from harness.metrics import SegMetrics

# every collective gives up after this long: a survivor of a dead rank ends instead of hanging
TIMEOUT_S = 600


class Terminated(KeyboardInterrupt):
    """SIGTERM from the launcher: another rank ended (or the trial was stopped)."""


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    rank_devices: list[str] = field(default_factory=list)  # as the machine numbers them
    in_sync: bool = True  # False once this rank left the common path (no more collectives)
    shielded: bool = False  # the record is being written: a SIGTERM waits
    pending: StopTrial | None = None  # a stop raised mid-epoch, agreed on at the epoch's end

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def info(self, batch_size: int) -> dict[str, Any]:
        """What summary.json's ``runtime`` and the W&B config record about the ranks."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "rank_devices": list(self.rank_devices),
            "batch_size_per_rank": batch_size,
            "global_batch_size": batch_size * self.world_size,
        }


def launched() -> bool:
    """True in a process torchrun started for a world of more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(name: str, local_rank: int) -> tuple[torch.device, str]:
    """The device and backend of a rank: ``cuda:LOCAL_RANK`` with nccl, or the CPU with gloo."""
    cuda = torch.cuda.is_available()
    if name == "cpu" or (name == "auto" and not cuda):
        return torch.device("cpu"), "gloo"
    if name not in ("auto", "cuda"):
        raise ConfigError(
            f"train.device={name!r}: a trial on several processes puts each rank on "
            "cuda:LOCAL_RANK; use auto, cuda or cpu"
        )
    if not cuda:
        raise ConfigError(f"train.device={name!r}: CUDA is not available on this machine")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {local_rank}: only {torch.cuda.device_count()} CUDA GPU(s) visible"
        )
    return torch.device("cuda", local_rank), "nccl"


def from_env(device_name: str, timeout_s: float = TIMEOUT_S) -> DistContext | None:
    """The process group of a torchrun rank (None outside torchrun or for a world of one)."""
    if not launched():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device, backend = rank_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    torch_dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    ctx = DistContext(rank, world, local_rank, backend, device)
    here = physical_device(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
    ctx.rank_devices = [str(d) for d in gather(ctx, here)]
    _terminate_as_interrupt(ctx)
    _die_with_launcher()
    return ctx


def _die_with_launcher() -> None:
    """Linux: this rank gets SIGTERM when its parent (torchrun's agent) dies, so no rank
    outlives a launcher that was killed."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def _terminate_as_interrupt(ctx: DistContext) -> None:
    """The launcher stops the other ranks with SIGTERM when one fails: end like Ctrl-C (the
    record says how the trial ended), but never in the middle of writing that record."""

    def handler(signum: int, frame: Any) -> None:
        if ctx.shielded:
            return
        ctx.shielded = True  # once
        raise Terminated("terminated by the launcher (another rank ended)")

    signal.signal(signal.SIGTERM, handler)


def teardown(ctx: DistContext | None) -> None:
    """The process group's end; skipped once a rank left the common path (its peers may be
    gone, and the process ends anyway)."""
    if ctx is not None and ctx.in_sync and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# --- data -----------------------------------------------------------------------------------------


class ShardSampler(Sampler[int]):
    """Rank r of w takes indices r, r + w, r + 2w, ...: every index exactly once over the ranks,
    no padding (DistributedSampler repeats images to even the ranks out, which would count them
    twice in the confusion matrix)."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def samplers(ctx: DistContext, bundle: Any, seed: int) -> tuple[Sampler, Sampler]:
    """This rank's share of ``bundle.train`` (shuffled with ``seed``) and of ``bundle.val``."""
    train_sampler: DistributedSampler[Any] = DistributedSampler(
        bundle.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
    )
    return train_sampler, ShardSampler(len(bundle.val), ctx.rank, ctx.world_size)


def start_epoch(ctx: DistContext, loader: Any, epoch: int) -> None:
    """A new shuffle per epoch (the same on every rank), and the test-only rank fault."""
    exit_if_rank_fault(ctx.rank, epoch)
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


# --- the model ------------------------------------------------------------------------------------


def wrap(ctx: DistContext, net: nn.Module) -> nn.Module:
    """DistributedDataParallel around the module that runs the forward pass (it broadcasts rank
    0's weights, so every rank starts from the same model)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def sync_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank before evaluating: each rank updated
    them on its own batches, and all must evaluate (and rank 0 save) one model."""
    for buffer in model.buffers():
        torch_dist.broadcast(buffer, src=0)


# --- collectives ----------------------------------------------------------------------------------


def gather(ctx: DistContext, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    out: list[Any] = [None] * ctx.world_size
    torch_dist.all_gather_object(out, value)
    return out


def reduce_metrics(
    ctx: DistContext, metrics: SegMetrics, loss_sum: float, n_images: int
) -> tuple[float, int]:
    """The confusion matrix, the per-image mIoUs and the loss summed over the ranks (in place on
    ``metrics``); returns the summed loss and image count."""
    torch_dist.all_reduce(metrics.cm)
    values = metrics.per_image_values().cpu()
    metrics.set_per_image(torch.cat(gather(ctx, values)))
    totals = torch.tensor([loss_sum, float(n_images)], dtype=torch.float64)
    totals = totals.to(metrics.cm.device)
    torch_dist.all_reduce(totals)
    return float(totals[0]), int(totals[1])


def reduce_train(ctx: DistContext, tr: dict[str, float]) -> dict[str, float]:
    """The epoch's training loss over every rank's images (``images`` counts them all)."""
    sums = torch.tensor([tr["loss"] * tr["images"], tr["images"]], dtype=torch.float64)
    sums = sums.to(ctx.device)
    torch_dist.all_reduce(sums)
    loss, images = float(sums[0]), float(sums[1])
    return {**tr, "loss": loss / max(images, 1.0), "images": images}


StepHook = Callable[[int, float], None]


def deferred(ctx: DistContext, on_step: StepHook) -> StepHook:
    """A stop raised after a step waits for the epoch's end, where the ranks agree on it (a rank
    that left mid-epoch would leave the others waiting in the next gradient all-reduce)."""

    def run(step: int, loss: float) -> None:
        if ctx.pending is not None:
            return
        try:
            on_step(step, loss)
        except StopTrial as exc:
            ctx.pending = exc

    return run


def agree(ctx: DistContext, stop: StopTrial | None) -> StopTrial | None:
    """The stop every rank takes: the first rank's (rank 0 first) that has one, or None."""
    mine = stop or ctx.pending
    ctx.pending = None
    votes = gather(ctx, None if mine is None else (mine.reason, mine.status))
    for rank, vote in enumerate(votes):
        if vote is not None:
            reason = vote[0] if rank == 0 else f"rank {rank}: {vote[0]}"
            return StopTrial(reason, vote[1])
    return None


# --- the checks on every rank ---------------------------------------------------------------------


def group_signature(optimizer: torch.optim.Optimizer) -> list[tuple[str, int, int, float]]:
    """Per optimiser group: its name, tensors, elements and lr: what must match across ranks."""
    return [
        (
            str(g.get("name", f"group{i}")),
            len(g["params"]),
            sum(p.numel() for p in g["params"]),
            float(g["lr"]),
        )
        for i, g in enumerate(optimizer.param_groups)
    ]


def _describe(signature: Sequence[tuple[str, int, int, float]]) -> str:
    groups = ", ".join(f"{n} ({e} elements, lr {lr:.3g})" for n, _, e, lr in signature)
    return f"{len(signature)} group(s): {groups}"


def rank_findings(
    ctx: DistContext, optimizer: torch.optim.Optimizer, findings: dict[str, str]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Every rank's optimiser groups and audit findings, gathered: a rank whose groups differ
    from rank 0's (count, sizes, lrs) is ``ranks-differ:optimizer`` with both sides as evidence,
    and a finding rank 0 does not have is added with its rank. Returns the new flags and one
    record per rank (for summary.json)."""
    mine = {"signature": group_signature(optimizer), "findings": findings}
    ranks = gather(ctx, mine)
    base = ranks[0]["signature"]
    differ = [r for r, got in enumerate(ranks) if got["signature"] != base]
    flags: dict[str, str] = {}
    if differ:
        parts = [f"rank {r}: {_describe(ranks[r]['signature'])}" for r in differ]
        flags[ranks_differ("optimizer")] = (
            f"optimiser param groups differ from rank 0's ({_describe(base)}): " + "; ".join(parts)
        )
    for r, got in enumerate(ranks[1:], start=1):
        for flag, text in got["findings"].items():
            if flag not in ranks[0]["findings"]:
                flags.setdefault(flag, f"rank {r}: {text}")
    records = [
        {
            "rank": r,
            "device": ctx.rank_devices[r] if r < len(ctx.rank_devices) else "",
            "optimizer": _describe(got["signature"]),
            "findings": sorted(got["findings"]),
        }
        for r, got in enumerate(ranks)
    ]
    return flags, records


def gather_flags(ctx: DistContext, flags: dict[str, str]) -> dict[str, str]:
    """Every rank's check verdicts on rank 0: one rank's flag that rank 0 did not raise is added
    with its rank in the evidence (ranks hold the same weights, so they rarely differ)."""
    ranks = gather(ctx, dict(flags))
    merged = dict(ranks[0])
    for r, found in enumerate(ranks[1:], start=1):
        for flag, text in found.items():
            merged.setdefault(flag, f"rank {r}: {text}")
    return merged
