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
from functools import partial
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

import harness.fit.distributed as ddp
from harness import __version__
from harness.callbacks import Callback, StopTrial
from harness.checks.audit import AuditReport, audit_param_groups
from harness.checks.flags import NAN_LOSS, audit_flag
from harness.checks.learning import majority_miou, prior_loss
from harness.checks.pairing import check_mask_pairing
from harness.checks.updates import UpdateMonitor
from harness.config import TrialConfig
from harness.data.dataset import DataBundle
from harness.data.loaders import load_data, make_loaders
from harness.data.transforms import reseed
from harness.errors import ConfigError, HarnessError
from harness.faults import optimizer_for, skew_optimizer_for_rank, train_set_for
from harness.files import save_checkpoint
from harness.fit.display import epoch_line, print_audit
from harness.fit.distributed import DistContext
from harness.fit.guards import code_record, has_batchnorm, one_batch
from harness.fit.loop import (
    NonFiniteLoss,
    count_params,
    evaluate,
    grad_scaler,
    resolve_device,
    seed_everything,
    train_one_epoch,
)
from harness.fit.record import NullRecord, RunRecord, TrialResult, ensure_free
from harness.fit.runtime import Runtime, apply_cudnn, compile_error, compiled, trial_runtime
from harness.fit.verdicts import CheckFailed, Hooks, collect_flags
from harness.models import build_model, check_output
from harness.optim import build_scheduler, check_f_lr_modules, frozen_modules, group_lrs
from harness.progress import bar
from harness.secrets import mask_url
from harness.tracking import Tracker, TrialStart, make_tracker


class AuditFailed(HarnessError):
    """``--strict``: the param-group audit found problems, so the trial did not start."""


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
    prior: float = math.nan  # val loss of predicting the class frequencies everywhere
    status: str = "finished"
    reason: str | None = None
    global_step: int = 0
    dist: DistContext | None = None  # a trial on several processes: this rank's place in it
    train_net: nn.Module | None = None  # there: DistributedDataParallel around ``net``
    ranks: list[dict[str, Any]] = field(default_factory=list)  # per rank: device, optimiser
    ranks_flags: dict[str, str] = field(default_factory=dict)  # a rank that differs from rank 0

    @property
    def audit_ok_everywhere(self) -> bool:
        """No audit finding on this rank nor, on several processes, on any other."""
        others = any(r["findings"] for r in self.ranks)
        return self.audit.ok and not self.ranks_flags and not others

    @property
    def runtime_info(self) -> dict[str, Any]:
        info = self.runtime.to_dict()
        if self.dist is not None:
            info |= self.dist.info(self.cfg.train.batch_size)
        return info

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names)

    @property
    def amp(self) -> str | None:
        return self.runtime.amp

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
    dist: DistContext | None = None,
) -> TrialResult:
    """Train one trial and record it under ``cfg.run_dir``; returns what happened.

    A NaN/inf loss or a callback's ``StopTrial`` ends the trial with its status and reason
    recorded; user errors (``HarnessError``) propagate before anything is written.
    ``tracker`` (default: the one ``cfg.tracking`` names) gets the same rows and summary as the
    run record; a sweep passes its own to set the W&B group, tags and extra config.
    ``verbose=False`` (a sweep's trials) prints the audit only when it has findings and no
    epoch lines; ``label`` prefixes the live progress bar (``trial 3``). ``dist``: this process
    is one rank of a trial on several (``harness.fit.distributed``); only rank 0 writes the
    record and tracks, the others use a record and a tracker that write nothing.
    """
    state = _setup(cfg, callbacks, data, dist)
    main = dist is None or dist.is_main
    state.record = RunRecord(cfg.run_dir) if main else NullRecord(cfg.run_dir)
    if console is not None and verbose:  # only now: a refused trial names no folder
        console.print(f"harness {__version__}: trial [bold]{cfg.name}[/] -> {cfg.run_dir}")
    extra = {"dataset": state.bundle.info, "harness_version": __version__}
    state.record.write_config(cfg, extra | ({"code": state.code} if state.code else {}))
    state.record.write_audit({**state.audit.to_dict(), "enabled": cfg.train.audit})
    if console is not None:
        print_audit(console, cfg, state.audit, state.evidence, verbose)
    # started here so that a --strict abort shows up in W&B too; from here on, _finalize runs
    if not main:
        tracker = Tracker()
    state.tracker = tracker if tracker is not None else make_tracker(cfg, console)
    state.tracker.start(
        TrialStart(
            cfg=cfg,
            model=state.model,
            device=state.device,
            bundle=state.bundle,
            audit=state.audit,
            runtime=state.runtime_info,
        )
    )
    if cfg.train.strict and not state.audit_ok_everywhere:
        found = [f.message for f in state.audit.findings] + list(state.ranks_flags.values())
        messages = "; ".join(found)
        state.status, state.reason = "aborted", "strict: " + messages
        _finalize(state)
        raise AuditFailed(f"--strict: param-group audit found {len(found)} problem(s): " + messages)
    try:
        _run_epochs(state, console, verbose, label)
    except BaseException as exc:
        # Ctrl-C or a crash mid-training: the record still says what happened, then it goes on
        state.status = "failed"
        interrupted = isinstance(exc, KeyboardInterrupt)
        # a rank the launcher stopped says so; Ctrl-C has no message
        interrupt = str(exc) or "interrupted"
        # an error text can quote a storage URL: its password never reaches the record
        text = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
        state.reason = interrupt if interrupted else mask_url(text)
        if state.dist is not None:  # this rank left the common path: no more collectives
            state.dist.in_sync = False
        one_line = compile_error(exc)
        if one_line is not None:  # torch.compile's own message runs to pages
            state.reason = str(one_line)
        _finalize(state)
        if one_line is not None:
            raise one_line from exc
        raise
    return _finalize(state)


# --- setup: everything that can be refused, before anything is written --------------------------


def _setup(
    cfg: TrialConfig, callbacks: Sequence[Callback], data: Any, dist: DistContext | None
) -> FitState:
    start = time.perf_counter()
    ensure_free(cfg.run_dir)
    device = resolve_device(cfg.train.device) if dist is None else dist.device
    runtime = trial_runtime(cfg, device)
    seed_everything(cfg.train.seed)
    apply_cudnn(runtime)
    bundle = data if data is not None else load_data(cfg)
    bundle = dataclasses.replace(bundle, train=train_set_for(bundle.train, cfg.train.inject_bug))
    # before the seeding below: the few samples it draws must not shift training's RNG
    evidence = check_mask_pairing(bundle.train) if cfg.train.monitor else {}

    seed_everything(cfg.train.seed)  # model init must not depend on what data loading drew
    # albumentations keeps its own RNG, which seed_everything does not reach: the pairing check
    # above, or an earlier trial on the same dataset (a sweep worker reuses it), has moved it on
    reseed(bundle.train, cfg.train.seed)
    model = build_model(cfg.model, num_classes=len(bundle.class_names)).to(device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    check_f_lr_modules(model, cfg.optim)
    optimizer, scheduler = optimizer_for(model, cfg.optim, cfg.train.inject_bug)
    if dist is not None:
        skew_optimizer_for_rank(optimizer, dist.rank)  # a fault for the tests only
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
        samplers=None if dist is None else ddp.samplers(dist, bundle, cfg.train.seed),
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
    state = FitState(
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
        dist=dist,
    )
    if dist is not None:
        state.ranks_flags, state.ranks = ddp.rank_findings(dist, optimizer, audit_evidence)
        state.evidence |= state.ranks_flags
        state.train_net = ddp.wrap(dist, state.net)
    return state


# --- the epochs -----------------------------------------------------------------------------------


def _run_epochs(state: FitState, console: Console | None, verbose: bool, label: str) -> None:
    cfg = state.cfg
    steps_per_epoch = len(state.train_loader)
    scheduler = state.scheduler or build_scheduler(
        state.optimizer, cfg.optim, cfg.train.epochs * steps_per_epoch
    )
    scaler = grad_scaler(state.amp)
    criterion = nn.CrossEntropyLoss(ignore_index=state.bundle.ignore_index)
    prefix = f"{label}: " if label else ""
    hooks = Hooks(state.callbacks, state.evidence)

    def each_step(step: int, loss: float) -> None:
        hooks.step_end(state.global_step + step, loss)

    dist = state.dist
    on_step = each_step if dist is None else ddp.deferred(dist, each_step)

    hooks.fit_start(state.model, state.optimizer)
    epochs = cfg.train.epochs
    for epoch in range(1, epochs + 1):
        lrs = group_lrs(state.optimizer)  # the lr this epoch starts with
        best = f" (best {state.best_miou:.3f})" if state.best_epoch else ""
        if dist is not None:
            ddp.start_epoch(dist, state.train_loader, epoch)
        try:
            description = f"{prefix}epoch {epoch}/{epochs}{best}"
            with bar(
                steps_per_epoch, description, console=console, enabled=console is not None
            ) as advance:
                tr = train_one_epoch(
                    state.net if state.train_net is None else state.train_net,
                    criterion,
                    state.optimizer,
                    state.train_loader,
                    state.device,
                    scheduler=scheduler,
                    scaler=scaler,
                    amp=state.amp,
                    channels_last=state.channels_last,
                    advance=advance,
                    on_step=on_step if hooks.stepping else None,
                )
            state.global_step += int(tr["steps"])
            if dist is not None:
                tr = ddp.reduce_train(dist, tr)
        except StopTrial as exc:  # a monitor's verdict after its first steps
            state.status, state.reason = exc.status, f"epoch {epoch}: {exc.reason}"
            _say(console, f"[bold red]{prefix}trial stopped[/]: {state.reason}")
            return
        except NonFiniteLoss as exc:
            state.status, state.reason = "failed", f"epoch {epoch}: {exc}"
            if dist is not None:  # the other ranks are in the step's all-reduce: none follows
                dist.in_sync = False
            state.evidence.setdefault(NAN_LOSS, str(exc))
            _say(console, f"[bold red]{prefix}trial failed[/]: {state.reason}")
            return
        row, iou = _evaluate_epoch(state, criterion, epoch, tr, lrs)
        if console is not None and verbose:
            console.print(epoch_line(row, epochs), soft_wrap=True)
        _keep_best(state, epoch, row["val/mIoU"], iou)
        stop = _epoch_callbacks(state, hooks, epoch, row, final=epoch == epochs)
        if dist is not None:  # every rank stops at the same epoch, or none does
            stop = ddp.agree(dist, stop)
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
    dist = state.dist
    if dist is not None:
        ddp.sync_buffers(dist, state.model)
    ev = evaluate(
        state.net,
        criterion,
        state.val_loader,
        state.device,
        len(state.class_names),
        state.bundle.ignore_index,
        amp=state.amp,
        channels_last=state.channels_last,
        sync=None if dist is None else partial(ddp.reduce_metrics, dist),
    )
    if math.isnan(state.majority):
        state.majority = majority_miou(ev["class_pixels"])
        state.prior = prior_loss(ev["class_pixels"])
    row = {
        "epoch": epoch,
        "train/loss": tr["loss"],
        "val/loss": ev["loss"],
        "val/mIoU": ev["mIoU"],
        # what predicting the majority class everywhere scores: the no-learning level
        "val/majority_mIoU": state.majority,
        # the val loss of a model that learned nothing from its images (the class frequencies)
        "val/prior_loss": state.prior,
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
    if state.cfg.train.checkpoint and state.record is not None and state.record.writes:
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
    state: FitState, hooks: Hooks, epoch: int, row: dict[str, Any], *, final: bool
) -> StopTrial | None:
    """The callbacks' epoch hooks, then the row goes to the record and the tracker."""
    stop: StopTrial | None = None
    state.history.append(row)
    try:
        hooks.epoch_end(epoch, row)
    except StopTrial as exc:
        stop = exc
    finally:
        # after the callbacks: they may add keys (updates/*, grad_norm/*), and a pruned
        # trial's last epoch gets the final mask panel
        assert state.record is not None and state.tracker is not None
        state.record.append_metrics(row)
        state.tracker.log_epoch(row, final=stop is not None or final)
    return stop


# --- finalize: the verdicts and the record, whatever happened -------------------------------------


def _finalize(state: FitState) -> TrialResult:
    assert state.record is not None and state.tracker is not None
    if state.dist is not None:
        state.dist.shielded = True  # the launcher's SIGTERM must not cut the record short
    state.evidence = collect_flags(
        state.callbacks,
        state.evidence,
        status=state.status,
        history=state.history if state.cfg.train.monitor else None,
        majority=state.majority,
        dist=state.dist,
    )
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
        "runtime": state.runtime_info,
        **({"ranks": state.ranks} if state.dist is not None else {}),
        "num_params": count_params(state.model),
        "harness_version": __version__,
        "tracking": state.tracker.info(),
        **({"code": state.code} if state.code else {}),
    }
    # written first, so that a W&B upload that hangs or is killed cannot cost the record; then
    # again when finishing the run changed what the tracker reports (a failed artifact upload)
    state.record.write_summary(summary)
    state.tracker.finish(summary)
    tracking = state.tracker.info()
    if tracking != summary["tracking"]:
        summary["tracking"] = tracking
        state.record.write_summary(summary)
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
