"""The injectable silent bugs (``--inject-bug``, ``train.inject_bug``), all in one place.

Each one is a real mistake people make, reproduced on purpose so that the checks can be shown and
tested: the harness's own model, data and optimiser code stay free of them, and ``fit`` asks this
module for the (possibly broken) optimiser and training set at one point each.

- ``encoder-only-optimizer``: the story's line, an optimiser over the encoder only;
- ``frozen-decoder``: a leftover ``requires_grad_(False)`` on the decoder;
- ``zero-lr-decoder``: a per-module lr table with a typo, the decoder group at lr 0;
- ``shuffled-masks``: image i trained with the mask of image i+1 (a mis-sorted file list).

And the faults of a trial on several processes, for the tests only (never a config key): the
environment variable ``HARNESS_RANK_FAULT`` read by the ranks, ``exit:RANK:EPOCH:CODE`` (that rank
dies with exit code CODE as epoch EPOCH starts) or ``optimizer:RANK`` (that rank's last optimiser
group gets 10x its lr: a rank whose optimiser differs).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import nn

from harness.config import OPTIMIZER_BUGS, OptimConfig
from harness.errors import ConfigError
from harness.optim import (
    DECODER,
    ENCODER,
    build_optimizer,
    build_user,
    make_optimizer,
    param_groups,
)

DATA_BUGS = ("shuffled-masks",)


def build_buggy_optimizer(model: nn.Module, cfg: OptimConfig, bug: str) -> torch.optim.Optimizer:
    """The optimiser as the bug would build it."""
    needs = DECODER if bug in ("frozen-decoder", "zero-lr-decoder") else ENCODER
    children = [name for name, _ in model.named_children()]
    if needs not in children:
        raise ConfigError(
            f"train.inject_bug={bug!r}: the model has no module '{needs}' "
            f"(its top-level children: {', '.join(children)})"
        )
    if bug == "encoder-only-optimizer":
        # Exactly the story's line: a lower lr for the encoder ... and nothing else.
        # The FCN, decoder and head are never stepped and keep their random init.
        encoder = model.get_submodule(ENCODER)
        return make_optimizer(
            [{"name": ENCODER, "params": encoder.parameters(), "lr": cfg.f_lr}], cfg
        )
    if bug == "frozen-decoder":
        # A leftover freeze (e.g. from a fine-tuning recipe): the decoder keeps its random init
        model.get_submodule(DECODER).requires_grad_(False)
        return build_optimizer(model, cfg)
    if bug == "zero-lr-decoder":
        # A per-module lr table with a typo: the decoder group is stepped with lr 0
        groups = param_groups(model, cfg)
        for group in groups:
            if group["name"] == DECODER:
                group["lr"] = 0.0
        return make_optimizer(groups, cfg)
    raise ValueError(f"unknown bug {bug!r}")


def optimizer_for(
    model: nn.Module, cfg: OptimConfig, bug: str | None
) -> tuple[torch.optim.Optimizer, Any]:
    """The trial's optimiser and the user builder's scheduler (None unless ``optim.builder``
    returned one): the correct one unless ``bug`` is an optimiser bug (never with a builder)."""
    if bug in OPTIMIZER_BUGS:
        return build_buggy_optimizer(model, cfg, bug), None
    if cfg.builder is not None:
        return build_user(model, cfg)
    return build_optimizer(model, cfg), None


class ShiftedMasks(torch.utils.data.Dataset):
    """The ``shuffled-masks`` bug: image i comes with the mask of image (i + 1) % n."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.dataset[index]
        _, mask = self.dataset[(index + 1) % len(self.dataset)]
        return image, mask


def train_set_for(dataset: Any, bug: str | None) -> Any:
    """The training set the trial sees: the real one unless ``bug`` is a data bug."""
    return ShiftedMasks(dataset) if bug == "shuffled-masks" else dataset


RANK_FAULT_ENV = "HARNESS_RANK_FAULT"


def _rank_fault() -> list[str]:
    return os.environ.get(RANK_FAULT_ENV, "").split(":")


def exit_if_rank_fault(rank: int, epoch: int) -> None:
    """``exit:RANK:EPOCH:CODE``: this rank dies at once, as a crash would (no cleanup)."""
    fault = _rank_fault()
    if len(fault) == 4 and fault[0] == "exit" and (int(fault[1]), int(fault[2])) == (rank, epoch):
        print(f"rank {rank}: injected fault, exiting with code {fault[3]}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(int(fault[3]))


def skew_optimizer_for_rank(optimizer: torch.optim.Optimizer, rank: int) -> None:
    """``optimizer:RANK``: that rank's last group trains at 10x its lr."""
    fault = _rank_fault()
    if len(fault) == 2 and fault[0] == "optimizer" and int(fault[1]) == rank:
        optimizer.param_groups[-1]["lr"] *= 10
