"""One epoch of training and one evaluation, in the shape of torchvision's segmentation
references (``references/segmentation/train.py``), plus the small pieces they need."""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from harness.config.trial import DEVICE_PATTERN
from harness.errors import ConfigError
from harness.metrics import SegMetrics


class NonFiniteLoss(Exception):
    """The training loss became NaN or inf; the trial cannot go on."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The torch device ``name`` (auto, cpu, cuda, cuda:N, mps) stands for on this machine;
    ``option`` is what the user set it with, for the one-line error."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ConfigError(f"{option}={name!r}: must be auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{option}={name!r}: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}='mps': MPS is not available on this machine")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA runs asynchronously, so a timer read without this
    misses the steps still in flight (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision in ``amp``'s dtype (``Runtime.amp``: bfloat16, float16), None: off."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, amp))


def grad_scaler(amp: str | None) -> torch.amp.GradScaler | None:
    """float16 needs loss scaling (its small gradients underflow to 0); bfloat16 does not."""
    return torch.amp.GradScaler("cuda") if amp == "float16" else None


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    advance: Callable[..., None] = lambda **_: None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    model.train()
    loss_sum, n_images, step = 0.0, 0, 0
    start = time.perf_counter()
    for step, (images, masks) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = criterion(model(images), masks)
        value = loss.item()  # one sync per step: needed for the NaN check and the progress bar
        if not math.isfinite(value):
            raise NonFiniteLoss(f"training loss is {value} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += value * images.shape[0]
        n_images += images.shape[0]
        advance(info=f"loss {value:.3f}")
        if on_step is not None:
            on_step(step, value)
    synchronize(device)  # the last step's backward and update are still queued on CUDA
    seconds = time.perf_counter() - start
    return {
        "loss": loss_sum / max(n_images, 1),
        "images": float(n_images),
        "seconds": seconds,
        "steps": float(step),
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    ignore_index: int = 255,
    *,
    amp: str | None = None,
    channels_last: bool = False,
    sync: Callable[[SegMetrics, float, int], tuple[float, int]] | None = None,
) -> dict[str, Any]:
    """Loss and metrics over ``loader``. ``sync`` (a trial on several processes) sums the
    confusion matrix, the per-image mIoUs and the loss over the ranks before the metrics."""
    model.eval()
    metrics = SegMetrics(num_classes, ignore_index, device)
    loss_sum, n_images = 0.0, 0
    for images, masks in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
            loss = criterion(logits.float(), masks)
        loss_sum += float(loss) * images.shape[0]
        n_images += images.shape[0]
        metrics.update(masks, logits.argmax(1))
    if sync is not None:
        loss_sum, n_images = sync(metrics, loss_sum, n_images)
    result = metrics.compute()
    result["loss"] = loss_sum / max(n_images, 1)
    return result


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
