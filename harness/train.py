"""One training trial: ``fit(cfg)`` builds data, model and optimiser, audits, trains, records.

``train_one_epoch`` and ``evaluate`` follow torchvision's segmentation references. ``fit`` adds
what a sweep needs around them: the param-group audit before the first step, a run record, the
best checkpoint by val mIoU, a clean stop on a NaN/inf loss, and callbacks (pruning, monitors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader

from harness import __version__
from harness.config import TrialConfig
from harness.errors import ConfigError, HarnessError
from harness.metrics import SegMetrics
from harness.models import build_model
from harness.optim import (
    OPTIMIZER_BUGS,
    build_buggy_optimizer,
    build_optimizer,
    build_scheduler,
    frozen_modules,
    group_lrs,
)
from harness.record import RunRecord
from harness.sanity import AuditReport, audit_param_groups, audit_table
from harness.tracking import Tracker, make_tracker


class NonFiniteLoss(Exception):
    """The training loss became NaN or inf; the trial cannot go on."""


class StopTrial(Exception):
    """Raised by a callback to end a trial early (pruning, a monitor's verdict)."""

    def __init__(self, reason: str, status: str = "pruned") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class AuditFailed(HarnessError):
    """``--strict``: the param-group audit found problems, so the trial did not start."""


@dataclass
class TrialResult:
    status: str  # finished | failed | pruned | aborted
    reason: str | None
    best_miou: float
    best_epoch: int | None
    epochs_run: int
    history: list[dict[str, Any]]
    per_class_iou: dict[str, float]
    flags: list[str]
    wall_time_s: float
    run_dir: Path
    audit: AuditReport | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)  # flag -> what was seen


class Callback:
    """Hooks into ``fit``; override what you need. Raise ``StopTrial`` to end the trial."""

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """``row`` is the epoch's metrics row: keys added here reach metrics.jsonl and W&B."""

    def on_step_end(self, step: int, loss: float) -> None:
        """After each optimiser step (``step`` counts from 1 over the whole fit). Only called
        on callbacks that override it: the hot path costs nothing otherwise."""

    def on_fit_end(self, status: str) -> None:
        """Once, when the trial ends (finished, pruned, failed, aborted), before ``flags``."""

    def flags(self) -> dict[str, str]:
        """Flags this callback raised, each with its evidence; ``fit`` records them."""
        return {}


# --- building blocks -------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device='mps': MPS is not available on this machine")
    return torch.device(name)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _progress(console: Console | None) -> Progress | None:
    # a transient bar only makes sense on a terminal; in a log it leaves blank lines
    if console is None or not console.is_terminal:
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@contextlib.contextmanager
def _bar(console: Console | None, total: int, description: str) -> Iterator[Callable[..., None]]:
    """Yields ``advance(info=...)``; no-op without a console (tests, workers)."""
    progress = _progress(console)
    if progress is None:
        yield lambda **_: None
        return
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(info: str = "") -> None:
            progress.update(task, advance=1, info=info)

        yield advance


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
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
        with _autocast(device, amp):
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
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, Any]:
    model.eval()
    metrics = SegMetrics(num_classes, ignore_index, device)
    loss_sum, n_images = 0.0, 0
    for images, masks in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images)
            loss = criterion(logits.float(), masks)
        loss_sum += float(loss) * images.shape[0]
        n_images += images.shape[0]
        metrics.update(masks, logits.argmax(1))
    result = metrics.compute()
    result["loss"] = loss_sum / max(n_images, 1)
    return result


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a crash never leaves a truncated best.pt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- data -------------------------------------------------------------------------------------


def load_data(cfg: TrialConfig) -> Any:
    """The DataBundle for ``cfg.data``; the built-in dataset is generated once into the cache."""
    from harness.data.dataset import build_datasets
    from harness.data.synth import ensure_builtin

    if cfg.data.root is None:
        root = ensure_builtin(Path(cfg.data.cache_dir))
    else:
        root = Path(cfg.data.root)
    return build_datasets(cfg.data, root, seed=cfg.train.seed)


def make_loaders(
    bundle: Any, cfg: TrialConfig, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    from harness.data.transforms import seed_worker

    bs = cfg.train.batch_size
    workers = cfg.data.num_workers
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": seed_worker if workers else None,
        "persistent_workers": workers > 0,
    }
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


# --- fit --------------------------------------------------------------------------------------


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


def _default_callbacks(cfg: TrialConfig) -> list[Callback]:
    """The update monitor, unless ``train.monitor`` is off (the learning check runs in fit)."""
    if not cfg.train.monitor:
        return []
    from harness.monitor import UpdateMonitor

    return [
        UpdateMonitor(
            cfg.train.monitor_steps,
            frozen_modules(cfg.optim),
            stop=cfg.train.stop_never_updated,
        )
    ]


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train/loss {row['train/loss']:.4f}  "
        f"val/loss {row['val/loss']:.4f}  val/mIoU {row['val/mIoU']:.4f}  "
        f"val/pixel_acc {row['val/pixel_acc']:.4f}  {row['time/epoch_s']:.1f}s  "
        f"{row['time/train_img_per_s']:.1f} img/s"
    )


def fit(
    cfg: TrialConfig,
    *,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    data: Any = None,
    tracker: Tracker | None = None,
) -> TrialResult:
    """Train one trial and record it under ``cfg.run_dir``; returns what happened.

    A NaN/inf loss or a callback's ``StopTrial`` ends the trial with its status and reason
    recorded; user errors (``HarnessError``) propagate before anything is trained.
    ``tracker`` (default: the one ``cfg.tracking`` names) gets the same rows and summary as the
    run record; a sweep passes its own to set the W&B group, tags and extra config.
    """
    start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    record = RunRecord(cfg.run_dir)
    seed_everything(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    bundle = data if data is not None else load_data(cfg)
    if cfg.train.inject_bug == "shuffled-masks":
        bundle = dataclasses.replace(bundle, train=ShiftedMasks(bundle.train))
    class_names: list[str] = list(bundle.class_names)
    record.write_config(cfg, {"dataset": bundle.info, "harness_version": __version__})
    pairing: dict[str, str] = {}
    if cfg.train.monitor:
        from harness.monitor import check_mask_pairing

        # before the seeding below: the few samples it draws must not shift training's RNG
        pairing = check_mask_pairing(bundle.train)

    seed_everything(cfg.train.seed)  # model init must not depend on what data loading drew
    model = build_model(cfg.model, num_classes=len(class_names)).to(device)
    use_cuda = device.type == "cuda"
    amp = cfg.train.amp and use_cuda
    channels_last = cfg.train.channels_last and use_cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    if cfg.train.inject_bug in OPTIMIZER_BUGS:
        optimizer = build_buggy_optimizer(model, cfg.optim, cfg.train.inject_bug)
    else:
        optimizer = build_optimizer(model, cfg.optim)
    audit = audit_param_groups(model, optimizer, frozen_on_purpose=frozen_modules(cfg.optim))
    if not cfg.train.audit:
        # switched off (e.g. to see what the other layers catch alone): the module table stays
        # as information, the findings do not become flags, tags or warnings
        audit = dataclasses.replace(audit, findings=())
    record.write_audit({**audit.to_dict(), "enabled": cfg.train.audit})
    flags = [f"audit:{f.code}" for f in audit.findings]
    evidence = {f"audit:{f.code}": f.message for f in audit.findings} | pairing
    callbacks = [*_default_callbacks(cfg), *callbacks]
    step_callbacks = [cb for cb in callbacks if type(cb).on_step_end is not Callback.on_step_end]
    global_step = 0

    def on_step(step: int, loss: float) -> None:
        for cb in step_callbacks:
            cb.on_step_end(global_step + step, loss)

    baseline_miou = math.nan  # val mIoU of predicting the majority class everywhere
    if console is not None:
        console.print(audit_table(audit))
        if not cfg.train.audit:
            console.print("param-group audit: off (train.audit=false), no findings raised")
        for finding in audit.findings:
            console.print(
                f"[bold red]WARNING[/] param-group audit: {finding.message}", soft_wrap=True
            )
        for flag, text in pairing.items():
            console.print(f"[bold red]WARNING[/] {flag}: {text}", soft_wrap=True)
        for name in frozen_modules(cfg.optim):
            console.print(f"{name}: frozen on purpose (f_lr=0), not a finding")

    train_loader, val_loader = make_loaders(bundle, cfg, device)
    if len(train_loader) == 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: no training batch fits")
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs * len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if amp and not torch.cuda.is_bf16_supported() else None
    criterion = nn.CrossEntropyLoss(ignore_index=bundle.ignore_index)

    history: list[dict[str, Any]] = []
    best_miou, best_epoch, best_iou = -math.inf, None, [math.nan] * len(class_names)
    status, reason = "finished", None

    def finish() -> TrialResult:
        for cb in callbacks:
            with contextlib.suppress(Exception):  # a broken callback must not lose the record
                cb.on_fit_end(status)
                evidence.update(cb.flags())
        if status == "finished" and cfg.train.monitor:
            from harness.monitor import check_learning

            evidence.update(check_learning(history, baseline_miou))
        flags.extend(f for f in evidence if f not in flags)
        best = best_miou if best_epoch is not None else math.nan
        per_class = dict(zip(class_names, best_iou, strict=True))
        last = history[-1] if history else {}
        wall_time = time.perf_counter() - start
        summary: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "best_val_mIoU": best,
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "per_class_iou": per_class,
            "final": last,
            "flags": flags,
            "evidence": evidence,
            "audit_ok": audit.ok,
            "wall_time_s": wall_time,
            "device": str(device),
            "num_params": count_params(model),
            "harness_version": __version__,
            "tracking": track.info(),
        }
        record.write_summary(summary)
        track.finish(summary)
        return TrialResult(
            status=status,
            reason=reason,
            best_miou=best,
            best_epoch=best_epoch,
            epochs_run=len(history),
            history=history,
            per_class_iou=per_class,
            flags=flags,
            wall_time_s=wall_time,
            run_dir=record.dir,
            audit=audit,
            summary=summary,
            evidence=dict(evidence),
        )

    # started here so that a --strict abort shows up in W&B too; from here on, finish() runs
    track = tracker if tracker is not None else make_tracker(cfg, console)
    track.start(cfg, model=model, device=device, bundle=bundle, audit=audit)

    if cfg.train.strict and not audit.ok:
        status, reason = "aborted", "strict: " + "; ".join(f.message for f in audit.findings)
        finish()
        raise AuditFailed(
            f"--strict: param-group audit found {len(audit.findings)} problem(s): "
            + "; ".join(f.message for f in audit.findings)
        )

    epochs = cfg.train.epochs
    try:
        for cb in callbacks:  # inside the try: a failing callback still closes the record
            cb.on_fit_start(model, optimizer)
        for epoch in range(1, epochs + 1):
            lrs = group_lrs(optimizer)  # the lr this epoch starts with
            try:
                with _bar(console, len(train_loader), f"epoch {epoch}/{epochs}") as advance:
                    tr = train_one_epoch(
                        model,
                        criterion,
                        optimizer,
                        train_loader,
                        device,
                        scheduler=scheduler,
                        scaler=scaler,
                        amp=amp,
                        channels_last=channels_last,
                        advance=advance,
                        on_step=on_step if step_callbacks else None,
                    )
                global_step += int(tr["steps"])
            except StopTrial as exc:  # a monitor's verdict after its first steps
                status, reason = exc.status, f"epoch {epoch}: {exc.reason}"
                if console is not None:
                    console.print(f"[bold red]trial stopped[/]: {reason}", soft_wrap=True)
                break
            except NonFiniteLoss as exc:
                status, reason = "failed", f"epoch {epoch}: {exc}"
                flags.append("nan-loss")
                if console is not None:
                    console.print(f"[bold red]trial failed[/]: {reason}")
                break
            ev = evaluate(
                model,
                criterion,
                val_loader,
                device,
                len(class_names),
                bundle.ignore_index,
                amp=amp,
                channels_last=channels_last,
            )
            if math.isnan(baseline_miou):
                from harness.monitor import majority_miou

                baseline_miou = majority_miou(ev["class_pixels"])
            row: dict[str, Any] = {
                "epoch": epoch,
                "train/loss": tr["loss"],
                "val/loss": ev["loss"],
                "val/mIoU": ev["mIoU"],
                # what predicting the majority class everywhere scores: the no-learning level
                "val/majority_mIoU": baseline_miou,
                "val/pixel_acc": ev["pixel_acc"],
                "val/per_image_mIoU": ev["per_image_mIoU"],
                **{f"val/iou/{n}": v for n, v in zip(class_names, ev["iou"], strict=True)},
                **{f"lr/{n}": v for n, v in lrs.items()},
                "time/epoch_s": tr["seconds"],
                "time/train_img_per_s": tr["images"] / max(tr["seconds"], 1e-9),
            }
            history.append(row)
            if console is not None:
                console.print(_epoch_line(row, epochs), soft_wrap=True)
            miou = ev["mIoU"]
            if not math.isnan(miou) and miou > best_miou:
                best_miou, best_epoch, best_iou = miou, epoch, list(ev["iou"])
                if cfg.train.checkpoint:
                    save_checkpoint(
                        record.dir / "best.pt",
                        {
                            "model": model.state_dict(),
                            "config": cfg.to_dict(),
                            "class_names": class_names,
                            "epoch": epoch,
                            "val_mIoU": miou,
                        },
                    )
            stop: StopTrial | None = None
            try:
                for cb in callbacks:
                    cb.on_epoch_end(epoch, row)
            except StopTrial as exc:
                stop = exc
            finally:
                # after the callbacks: they may add keys (updates/*, grad_norm/*), and a pruned
                # trial's last epoch gets the final mask panel
                record.append_metrics(row)
                track.log_epoch(row, final=stop is not None or epoch == epochs)
            if stop is not None:
                status, reason = stop.status, f"epoch {epoch}: {stop.reason}"
                break
    except BaseException as exc:
        # Ctrl-C or a crash mid-training: the record still says what happened, then it goes on
        status = "failed"
        interrupted = isinstance(exc, KeyboardInterrupt)
        reason = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
        finish()
        raise
    return finish()
