"""One training trial: ``fit(cfg)`` builds data, model and optimiser, audits, trains, records.

``fit`` runs in three steps over one ``FitState``:

- ``_setup``: everything that can be refused (a bad weights file, no batch that fits, a folder
  that already holds a run) happens here, before anything is written, so a refused trial leaves
  nothing behind that would block the same command once the error is fixed;
- ``_run_epochs``: ``train_one_epoch`` + ``evaluate`` per epoch, the metrics row, the best
  checkpoint, and the callbacks (pruning, monitors), any of which may end the trial early;
- ``_finalize``: the checks' verdicts, ``summary.json``, the tracker's last word. It runs whatever
  happened, Ctrl-C and crashes included, so the record always says how the trial ended.
"""

# size: fit's three steps and the state they share read best in one file (its small pieces are in
# loop.py, guards.py, runtime.py and record.py)
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from harness import __version__
from harness.callbacks import Callback, StopTrial, callback_name
from harness.checks.audit import AuditReport, audit_param_groups, audit_table
from harness.checks.flags import NAN_LOSS, audit_flag, check_failed
from harness.checks.learning import check_learning, majority_miou
from harness.checks.pairing import check_mask_pairing
from harness.checks.updates import UpdateMonitor
from harness.config import TrialConfig
from harness.data.dataset import DataBundle
from harness.data.loaders import load_data, make_loaders
from harness.errors import ConfigError, HarnessError
from harness.faults import optimizer_for, train_set_for
from harness.files import save_checkpoint
from harness.fit.guards import code_record, has_batchnorm, one_batch
from harness.fit.loop import (
    NonFiniteLoss,
    count_params,
    evaluate,
    resolve_device,
    seed_everything,
    train_one_epoch,
)
from harness.fit.record import RunRecord, ensure_free
from harness.fit.runtime import Runtime, apply_cudnn, compile_error, compiled, trial_runtime
from harness.models import build_model, check_output
from harness.optim import build_scheduler, check_f_lr_modules, frozen_modules, group_lrs
from harness.progress import bar
from harness.tracking import Tracker, make_tracker


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


@dataclass
class FitState:
    """Everything one trial holds while it trains; ``_finalize`` turns it into the record."""

    cfg: TrialConfig
    device: torch.device
    bundle: DataBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    audit: AuditReport
    callbacks: list[Callback]
    train_loader: DataLoader
    val_loader: DataLoader
    start: float
    evidence: dict[str, str]  # flag -> evidence, in the order the flags were raised
    runtime: Runtime
    net: nn.Module  # what runs the forward pass: the model, or torch.compile of it
    scheduler: Any = None  # a user builder's own scheduler (else built from cfg.optim)
    code: dict[str, Any] = field(default_factory=dict)  # user code: import path, args, sha256
    record: RunRecord | None = None
    tracker: Tracker | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_miou: float = -math.inf
    best_epoch: int | None = None
    best_iou: list[float] = field(default_factory=list)
    majority: float = math.nan  # val mIoU of predicting the majority class everywhere
    status: str = "finished"
    reason: str | None = None
    global_step: int = 0

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names)

    @property
    def amp(self) -> bool:
        return self.runtime.amp is not None

    @property
    def channels_last(self) -> bool:
        return self.runtime.channels_last


def default_callbacks(cfg: TrialConfig) -> list[Callback]:
    """The update monitor, unless ``train.monitor`` is off (the learning check runs in fit)."""
    if not cfg.train.monitor:
        return []
    monitor = UpdateMonitor(
        cfg.train.monitor_steps, frozen_modules(cfg.optim), stop=cfg.train.stop_never_updated
    )
    return [monitor]


def fit(
    cfg: TrialConfig,
    *,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    data: Any = None,
    tracker: Tracker | None = None,
    verbose: bool = True,
    label: str = "",
) -> TrialResult:
    """Train one trial and record it under ``cfg.run_dir``; returns what happened.

    A NaN/inf loss or a callback's ``StopTrial`` ends the trial with its status and reason
    recorded; user errors (``HarnessError``) propagate before anything is written.
    ``tracker`` (default: the one ``cfg.tracking`` names) gets the same rows and summary as the
    run record; a sweep passes its own to set the W&B group, tags and extra config.
    ``verbose=False`` (a sweep's trials) prints the audit only when it has findings and no
    epoch lines; ``label`` prefixes the live progress bar (``trial 3``).
    """
    state = _setup(cfg, callbacks, data)
    state.record = RunRecord(cfg.run_dir)
    extra = {"dataset": state.bundle.info, "harness_version": __version__}
    state.record.write_config(cfg, extra | ({"code": state.code} if state.code else {}))
    state.record.write_audit({**state.audit.to_dict(), "enabled": cfg.train.audit})
    if console is not None:
        _print_audit(console, state, verbose)
    # started here so that a --strict abort shows up in W&B too; from here on, _finalize runs
    state.tracker = tracker if tracker is not None else make_tracker(cfg, console)
    state.tracker.start(
        cfg,
        model=state.model,
        device=state.device,
        bundle=state.bundle,
        audit=state.audit,
        runtime=state.runtime.to_dict(),
    )
    if cfg.train.strict and not state.audit.ok:
        messages = "; ".join(f.message for f in state.audit.findings)
        state.status, state.reason = "aborted", "strict: " + messages
        _finalize(state)
        raise AuditFailed(
            f"--strict: param-group audit found {len(state.audit.findings)} problem(s): " + messages
        )
    try:
        _run_epochs(state, console, verbose, label)
    except BaseException as exc:
        # Ctrl-C or a crash mid-training: the record still says what happened, then it goes on
        state.status = "failed"
        interrupted = isinstance(exc, KeyboardInterrupt)
        state.reason = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
        one_line = compile_error(exc)
        if one_line is not None:  # torch.compile's own message runs to pages
            state.reason = str(one_line)
        _finalize(state)
        if one_line is not None:
            raise one_line from exc
        raise
    return _finalize(state)


# --- setup: everything that can be refused, before anything is written --------------------------


def _setup(cfg: TrialConfig, callbacks: Sequence[Callback], data: Any) -> FitState:
    start = time.perf_counter()
    ensure_free(cfg.run_dir)
    device = resolve_device(cfg.train.device)
    runtime = trial_runtime(cfg, device)
    seed_everything(cfg.train.seed)
    apply_cudnn(runtime)
    bundle = data if data is not None else load_data(cfg)
    bundle = dataclasses.replace(bundle, train=train_set_for(bundle.train, cfg.train.inject_bug))
    # before the seeding below: the few samples it draws must not shift training's RNG
    evidence = check_mask_pairing(bundle.train) if cfg.train.monitor else {}

    seed_everything(cfg.train.seed)  # model init must not depend on what data loading drew
    model = build_model(cfg.model, num_classes=len(bundle.class_names)).to(device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    check_f_lr_modules(model, cfg.optim)
    optimizer, scheduler = optimizer_for(model, cfg.optim, cfg.train.inject_bug)
    audit = audit_param_groups(model, optimizer, frozen_on_purpose=frozen_modules(cfg.optim))
    if not cfg.train.audit:
        # switched off (e.g. to see what the other layers catch alone): the module table stays
        # as information, the findings do not become flags, tags or warnings
        audit = dataclasses.replace(audit, findings=())
    train_loader, val_loader = make_loaders(
        bundle,
        cfg,
        num_workers=runtime.num_workers,
        pin_memory=runtime.pin_memory,
        persistent_workers=runtime.persistent_workers,
    )
    if len(train_loader) == 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: no training batch fits")
    if len(bundle.train) < 2 and has_batchnorm(model):
        # every batch would hold one image, and BatchNorm cannot train on a batch of one
        raise ConfigError(
            f"data: the training set holds {len(bundle.train)} image; a model with BatchNorm "
            "needs at least 2 per batch (add images, or lower data.val_fraction)"
        )
    if cfg.model.user and len(
        bundle.val
    ):  # built-in models are known to fit; their RNG stream stays untouched
        images = one_batch(bundle.val, cfg.train.batch_size)
        check_output(model, images, len(bundle.class_names), device, cfg.model.name)
    audit_evidence = {audit_flag(f.code): f.message for f in audit.findings}
    return FitState(
        cfg=cfg,
        device=device,
        bundle=bundle,
        model=model,
        optimizer=optimizer,
        audit=audit,
        callbacks=[*default_callbacks(cfg), *callbacks],
        train_loader=train_loader,
        val_loader=val_loader,
        start=start,
        evidence=audit_evidence | evidence,
        runtime=runtime,
        net=compiled(model, runtime),
        scheduler=scheduler,
        code=code_record(cfg),
        best_iou=[math.nan] * len(bundle.class_names),
    )


def _print_audit(console: Console, state: FitState, verbose: bool) -> None:
    """The audit table and its warnings; off ``verbose``, only when there is something to see."""
    cfg, audit = state.cfg, state.audit
    problems = {f: t for f, t in state.evidence.items() if not f.startswith("audit:")}
    if not verbose and audit.ok and not problems:
        return
    console.print(audit_table(audit))
    if not cfg.train.audit:
        console.print("param-group audit: off (train.audit=false), no findings raised")
    for finding in audit.findings:
        console.print(f"[bold red]WARNING[/] param-group audit: {finding.message}", soft_wrap=True)
    for flag, text in problems.items():
        console.print(f"[bold red]WARNING[/] {flag}: {text}", soft_wrap=True)
    if verbose:
        for name in frozen_modules(cfg.optim):
            console.print(f"{name}: frozen on purpose (f_lr=0), not a finding")


# --- the epochs -----------------------------------------------------------------------------------


def _run_epochs(state: FitState, console: Console | None, verbose: bool, label: str) -> None:
    cfg = state.cfg
    steps_per_epoch = len(state.train_loader)
    scheduler = state.scheduler or build_scheduler(
        state.optimizer, cfg.optim, cfg.train.epochs * steps_per_epoch
    )
    bf16 = torch.cuda.is_bf16_supported() if state.amp else False
    scaler = torch.amp.GradScaler("cuda") if state.amp and not bf16 else None
    criterion = nn.CrossEntropyLoss(ignore_index=state.bundle.ignore_index)
    step_callbacks = [
        cb for cb in state.callbacks if type(cb).on_step_end is not Callback.on_step_end
    ]

    def on_step(step: int, loss: float) -> None:
        for cb in step_callbacks:
            cb.on_step_end(state.global_step + step, loss)

    for cb in state.callbacks:  # inside fit's try: a failing callback still closes the record
        cb.on_fit_start(state.model, state.optimizer)
    epochs = cfg.train.epochs
    prefix = f"{label}: " if label else ""
    for epoch in range(1, epochs + 1):
        lrs = group_lrs(state.optimizer)  # the lr this epoch starts with
        best = f" (best {state.best_miou:.3f})" if state.best_epoch else ""
        try:
            description = f"{prefix}epoch {epoch}/{epochs}{best}"
            with bar(
                steps_per_epoch, description, console=console, enabled=console is not None
            ) as advance:
                tr = train_one_epoch(
                    state.net,
                    criterion,
                    state.optimizer,
                    state.train_loader,
                    state.device,
                    scheduler=scheduler,
                    scaler=scaler,
                    amp=state.amp,
                    channels_last=state.channels_last,
                    advance=advance,
                    on_step=on_step if step_callbacks else None,
                )
            state.global_step += int(tr["steps"])
        except StopTrial as exc:  # a monitor's verdict after its first steps
            state.status, state.reason = exc.status, f"epoch {epoch}: {exc.reason}"
            _say(console, f"[bold red]{prefix}trial stopped[/]: {state.reason}")
            return
        except NonFiniteLoss as exc:
            state.status, state.reason = "failed", f"epoch {epoch}: {exc}"
            state.evidence.setdefault(NAN_LOSS, str(exc))
            _say(console, f"[bold red]{prefix}trial failed[/]: {state.reason}")
            return
        row, iou = _evaluate_epoch(state, criterion, epoch, tr, lrs)
        if console is not None and verbose:
            console.print(_epoch_line(row, epochs), soft_wrap=True)
        _keep_best(state, epoch, row["val/mIoU"], iou)
        stop = _epoch_callbacks(state, epoch, row, final=epoch == epochs)
        if stop is not None:
            state.status, state.reason = stop.status, f"epoch {epoch}: {stop.reason}"
            return


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text, soft_wrap=True)


def _evaluate_epoch(
    state: FitState, criterion: nn.Module, epoch: int, tr: dict[str, float], lrs: dict[str, float]
) -> tuple[dict[str, Any], list[float]]:
    """The epoch's metrics row (metrics.jsonl, W&B) and the per-class IoU."""
    ev = evaluate(
        state.net,
        criterion,
        state.val_loader,
        state.device,
        len(state.class_names),
        state.bundle.ignore_index,
        amp=state.amp,
        channels_last=state.channels_last,
    )
    if math.isnan(state.majority):
        state.majority = majority_miou(ev["class_pixels"])
    row = {
        "epoch": epoch,
        "train/loss": tr["loss"],
        "val/loss": ev["loss"],
        "val/mIoU": ev["mIoU"],
        # what predicting the majority class everywhere scores: the no-learning level
        "val/majority_mIoU": state.majority,
        "val/pixel_acc": ev["pixel_acc"],
        "val/per_image_mIoU": ev["per_image_mIoU"],
        **{f"val/iou/{n}": v for n, v in zip(state.class_names, ev["iou"], strict=True)},
        **{f"lr/{n}": v for n, v in lrs.items()},
        "time/epoch_s": tr["seconds"],
        "time/train_img_per_s": tr["images"] / max(tr["seconds"], 1e-9),
    }
    return row, list(ev["iou"])


def _keep_best(state: FitState, epoch: int, miou: float, iou: list[float]) -> None:
    """The best epoch by val mIoU, and its checkpoint."""
    if math.isnan(miou) or miou <= state.best_miou:
        return
    state.best_miou, state.best_epoch, state.best_iou = miou, epoch, iou
    if state.cfg.train.checkpoint and state.record is not None:
        save_checkpoint(
            state.record.dir / "best.pt",
            {
                "model": state.model.state_dict(),
                "config": state.cfg.to_dict(),
                "class_names": state.class_names,
                "epoch": epoch,
                "val_mIoU": miou,
            },
        )


def _epoch_callbacks(
    state: FitState, epoch: int, row: dict[str, Any], *, final: bool
) -> StopTrial | None:
    """The callbacks' epoch hooks, then the row goes to the record and the tracker."""
    stop: StopTrial | None = None
    state.history.append(row)
    try:
        for cb in state.callbacks:
            cb.on_epoch_end(epoch, row)
    except StopTrial as exc:
        stop = exc
    finally:
        # after the callbacks: they may add keys (updates/*, grad_norm/*), and a pruned
        # trial's last epoch gets the final mask panel
        assert state.record is not None and state.tracker is not None
        state.record.append_metrics(row)
        state.tracker.log_epoch(row, final=stop is not None or final)
    return stop


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train/loss {row['train/loss']:.4f}  "
        f"val/loss {row['val/loss']:.4f}  val/mIoU {row['val/mIoU']:.4f}  "
        f"val/pixel_acc {row['val/pixel_acc']:.4f}  {row['time/epoch_s']:.1f}s  "
        f"{row['time/train_img_per_s']:.1f} img/s"
    )


# --- finalize: the verdicts and the record, whatever happened -------------------------------------


def _collect_flags(state: FitState) -> None:
    """Each callback's verdict, and the learning check. A check that raises is recorded as
    ``check-failed:<name>`` with its error, never dropped: a broken check must be seen."""
    for cb in state.callbacks:
        try:
            cb.on_fit_end(state.status)
            found = cb.flags()
        except Exception as exc:
            found = {check_failed(callback_name(cb)): f"{type(exc).__name__}: {exc}"[:300]}
        for flag, text in found.items():
            state.evidence.setdefault(flag, text)
    if state.status == "finished" and state.cfg.train.monitor:
        try:
            found = check_learning(state.history, state.majority)
        except Exception as exc:
            found = {check_failed("learning"): f"{type(exc).__name__}: {exc}"[:300]}
        for flag, text in found.items():
            state.evidence.setdefault(flag, text)


def _finalize(state: FitState) -> TrialResult:
    assert state.record is not None and state.tracker is not None
    _collect_flags(state)
    flags = list(state.evidence)
    best = state.best_miou if state.best_epoch is not None else math.nan
    per_class = dict(zip(state.class_names, state.best_iou, strict=True))
    wall_time = time.perf_counter() - state.start
    summary: dict[str, Any] = {
        "status": state.status,
        "reason": state.reason,
        "best_val_mIoU": best,
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "per_class_iou": per_class,
        "final": state.history[-1] if state.history else {},
        "flags": flags,
        "evidence": dict(state.evidence),
        "audit_ok": state.audit.ok,
        "wall_time_s": wall_time,
        "device": str(state.device),
        # the resolved loader, cuDNN, autocast and compile settings (the auto config values)
        "runtime": state.runtime.to_dict(),
        "num_params": count_params(state.model),
        "harness_version": __version__,
        "tracking": state.tracker.info(),
        **({"code": state.code} if state.code else {}),
    }
    state.record.write_summary(summary)
    state.tracker.finish(summary)
    return TrialResult(
        status=state.status,
        reason=state.reason,
        best_miou=best,
        best_epoch=state.best_epoch,
        epochs_run=len(state.history),
        history=state.history,
        per_class_iou=per_class,
        flags=flags,
        wall_time_s=wall_time,
        run_dir=state.record.dir,
        audit=state.audit,
        summary=summary,
        evidence=dict(state.evidence),
    )
