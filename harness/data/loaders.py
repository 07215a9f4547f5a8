"""From a trial config to its DataLoaders: the dataset (built-in or the user's) and the loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from harness.config import TrialConfig
from harness.data.dataset import DataBundle, build_datasets
from harness.data.synth import ensure_builtin
from harness.data.transforms import seed_worker


def load_data(cfg: TrialConfig) -> DataBundle:
    """The DataBundle for ``cfg.data``; the built-in dataset is generated once into the cache."""
    if cfg.data.root is None:
        root = ensure_builtin(Path(cfg.data.cache_dir))
    else:
        root = Path(cfg.data.root)
    return build_datasets(cfg.data, root, seed=cfg.train.seed)


def make_loaders(
    bundle: Any,
    cfg: TrialConfig,
    *,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool,
    samplers: tuple[Sampler, Sampler] | None = None,
) -> tuple[DataLoader, DataLoader]:
    """The train and val loaders, with the loader settings resolved for the device
    (``harness.fit.runtime.trial_runtime``: the config's auto values made concrete).
    ``samplers``: a trial on several processes, this rank's share of train and val."""
    bs = cfg.train.batch_size
    workers = num_workers
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "worker_init_fn": seed_worker if workers else None,
        "persistent_workers": persistent_workers and workers > 0,
    }
    if samplers is not None:
        train_sampler, val_sampler = samplers
        train = DataLoader(
            bundle.train,
            batch_size=bs,
            sampler=train_sampler,
            drop_last=len(train_sampler) > bs,  # type: ignore[arg-type]
            **common,
        )
        return train, DataLoader(bundle.val, batch_size=bs, sampler=val_sampler, **common)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    train = DataLoader(
        bundle.train,
        batch_size=bs,
        shuffle=True,
        # BatchNorm cannot train on a last batch of one image at 1x1 after fc7
        drop_last=len(bundle.train) > bs,
        generator=generator,
        **common,
    )
    val = DataLoader(bundle.val, batch_size=bs, shuffle=False, **common)
    return train, val
