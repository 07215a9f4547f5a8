"""The training loop anyone would write by hand, as the yardstick for ``fit``'s throughput.

It trains with the settings ``fit`` resolves for the device (``trial_runtime``: loader workers,
cuDNN mode, autocast, channels_last, compile), so that a ratio of the two measures what ``fit``
adds (its checks, monitors and records), not a difference in precision or memory format.
Used by bench (b) and by the GPU check.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from harness.config import TrialConfig
from harness.data.loaders import make_loaders
from harness.fit.loop import autocast, grad_scaler, resolve_device, seed_everything, synchronize
from harness.fit.runtime import apply_cudnn, compiled, trial_runtime
from harness.models import build_model
from harness.optim import build_optimizer


def bare_loop_throughput(cfg: TrialConfig, bundle, epochs: int) -> list[float]:
    """Images/s of each epoch's training pass: forward, loss, backward, step, nothing else."""
    device = resolve_device(cfg.train.device)
    rt = trial_runtime(cfg, device)  # the settings fit would use on this device
    apply_cudnn(rt)
    seed_everything(cfg.train.seed)  # as fit: the same initial weights
    model = build_model(cfg.model, num_classes=bundle.num_classes).to(device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    net = compiled(model, rt)
    criterion = nn.CrossEntropyLoss(ignore_index=bundle.ignore_index)
    scaler = grad_scaler(rt.amp)  # as fit
    train_loader, _ = make_loaders(
        bundle,
        cfg,
        num_workers=rt.num_workers,
        pin_memory=rt.pin_memory,
        persistent_workers=rt.persistent_workers,
    )
    rates = []
    for _ in range(epochs):
        model.train()
        n, start = 0, time.perf_counter()
        for images, masks in train_loader:
            images = images.to(device, non_blocking=True)
            if rt.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = masks.to(device, non_blocking=True)
            with autocast(device, rt.amp):
                loss = criterion(net(images), masks)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            n += images.shape[0]
        synchronize(device)
        rates.append(n / (time.perf_counter() - start))
    return rates
