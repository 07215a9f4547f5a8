"""Command-line interface: ``harness trial``, ``predict``, ``sweep``, ``best``, ``report``,
``dashboard``, ``eda``, ``synth`` and ``bench``.

The config is built here, once: dataclass defaults, then ``--config FILE``, then the options given
on the command line. User errors (``HarnessError`` and bad options) print one line on stderr and
exit with code 2, without a traceback.
"""

# size: typer declares every option of a command in its signature; the logic lives in the packages
from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from harness import __version__
from harness.config import (
    INJECTABLE_BUGS,
    MODELS,
    OPTIMIZERS,
    OVERLAP_POLICIES,
    SCHEDULERS,
    TRACKING_BACKENDS,
    TrialConfig,
    load_config,
    read_yaml,
    with_overrides,
)
from harness.errors import HarnessError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# harness.sweep.ranks.LINK_ENV, spelled out: importing the sweep package would import optuna
SWEEP_LINK_ENV = "HARNESS_SWEEP_LINK"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    help="Train DeconvNet trials, sweep them with Optuna, and catch silent training bugs.",
)


TRIAL_EXAMPLES = """
Examples:

    harness trial                                   # built-in dataset, CPU-sized model

    harness trial --lr 1e-4 --f-lr 1e-5 --no-fcn-bn

    harness trial --data ../shared/data/fruits_nuts/data --image-size 128 --epochs 20

    harness trial --data export/annotations.json --images export/JPEGImages

    harness trial --config runs/my-study/best.yaml  # reproduce a recorded config

    harness trial --inject-bug encoder-only-optimizer   # the story's bug, caught by the audit

    harness trial --nproc 4                         # one trial on 4 GPUs (DDP, via torchrun)
"""


@app.command(epilog=TRIAL_EXAMPLES)
# long: the typer option declarations; the body is the override table and one fit call
def trial(
    config: Annotated[
        Path | None,
        typer.Option(help="YAML config (e.g. a run's config.yaml); options override it."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="COCO folder or annotation file; default: the built-in dataset."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Image folder, when the images are not where the layout puts them "
            "(e.g. JPEGImages/); file_name is relative to it."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model (" + ", ".join(MODELS) + ") or your factory package.module:function; "
            "default deconvnet."
        ),
    ] = None,
    model_arg: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE keyword argument of your model factory (repeatable)."),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="lr of the FCN, decoder and head.")] = None,
    f_lr: Annotated[
        float | None, typer.Option(help="lr of the encoder; 0 freezes it on purpose.")
    ] = None,
    encoder_bn: Annotated[
        bool | None, typer.Option(help="VGG16-BN encoder layout (else plain VGG16).")
    ] = None,
    fcn_bn: Annotated[bool | None, typer.Option(help="BatchNorm in fc6/fc7/fc6-deconv.")] = None,
    decoder_bn: Annotated[bool | None, typer.Option(help="BatchNorm after every deconv.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square training size in pixels.")] = None,
    overlap: Annotated[
        str | None,
        typer.Option(help="Label of overlapping pixels (" + ", ".join(OVERLAP_POLICIES) + ")."),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Built-in dataset and decoded-mask cache (runs/cache).")
    ] = None,
    augment: Annotated[
        bool | None, typer.Option(help="Train-time flip, scale/crop and colour jitter.")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Val share when the data has no split.")
    ] = None,
    width: Annotated[float | None, typer.Option(help="Channel multiplier (1.0 = paper).")] = None,
    fc_channels: Annotated[int | None, typer.Option(help="fc6/fc7 channels (paper 4096).")] = None,
    fc_kernel: Annotated[int | None, typer.Option(help="fc6 kernel (paper 7).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout2d after fc6/fc7.")] = None,
    pretrained: Annotated[
        bool | None, typer.Option(help="ImageNet weights for the encoder (needs width 1).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Local state dict for the encoder or the model.")
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help="Optimiser (" + ", ".join(OPTIMIZERS) + ") or your builder "
            "package.module:function (optim.builder)."
        ),
    ] = None,
    f_lr_modules: Annotated[
        str | None,
        typer.Option(help="Comma-separated top-level modules at --f-lr (default: encoder)."),
    ] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="LR schedule (" + ", ".join(SCHEDULERS) + ").")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed: same seed and device, same result.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    num_workers: Annotated[
        int | None,
        typer.Option(help="DataLoader workers (default: 0 on CPU, up to 8 on CUDA)."),
    ] = None,
    deterministic: Annotated[
        bool | None,
        typer.Option(
            "--deterministic/--no-deterministic",
            help="cuDNN deterministic, no benchmark mode (default: off on CUDA; no effect on CPU).",
        ),
    ] = None,
    compile_model: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile the model (default: off)."),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            help="Train on N processes with DistributedDataParallel, started through torchrun: "
            "one per GPU (cuda:LOCAL_RANK, nccl), or N on the CPU (gloo). --batch-size is per "
            "process (N x batch-size images per step)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Parent folder of run folders.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Run folder name; default: trial-YYYYmmdd-HHMMSS.")
    ] = None,
    inject_bug: Annotated[
        str | None,
        typer.Option(
            help="Reproduce a silent bug on purpose (" + ", ".join(INJECTABLE_BUGS) + ")."
        ),
    ] = None,
    strict: Annotated[
        bool | None,
        typer.Option("--strict", help="Abort when the param-group audit finds anything."),
    ] = None,
    audit: Annotated[
        bool | None,
        typer.Option(
            "--audit/--no-audit", help="Param-group audit findings become flags (default: on)."
        ),
    ] = None,
    monitor: Annotated[
        bool | None,
        typer.Option(
            "--monitor/--no-monitor",
            help="Update monitor and learning check: never-updated:*, no-learning (default: on).",
        ),
    ] = None,
    monitor_steps: Annotated[
        int | None,
        typer.Option(help="The update monitor's early look, in optimiser steps (default: 5)."),
    ] = None,
    stop_never_updated: Annotated[
        bool | None,
        typer.Option(
            "--stop-never-updated",
            help="End the trial (failed) as soon as a module that should train has not moved.",
        ),
    ] = None,
    tracking: Annotated[
        str | None,
        typer.Option(
            help="Where the trial is tracked besides runs/NAME/ ("
            + ", ".join(TRACKING_BACKENDS)
            + "): wandb is online when logged in, offline otherwise; local adds mask PNGs."
        ),
    ] = None,
    wandb_project: Annotated[
        str | None, typer.Option(help="W&B project (default: harness).")
    ] = None,
    wandb_entity: Annotated[
        str | None, typer.Option(help="W&B entity (user or team); default: your own.")
    ] = None,
    log_model: Annotated[
        bool | None,
        typer.Option("--log-model", help="Upload best.pt to W&B as a model artifact."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="The traceback when your model or builder raises."),
    ] = False,
) -> None:
    """Train one trial (DeconvNet, or DeepLab v1 with --model deeplabv1) under runs/NAME/."""
    raw = read_yaml(config) if config is not None else None
    cfg = load_config(config, raw=raw) if config is not None else TrialConfig()
    # precedence: defaults < --config FILE < options; a file without a name gets a timestamp
    named = isinstance(raw, dict) and "name" in raw
    overrides: dict[str, Any] = {
        "name": name or (cfg.name if named else time.strftime("trial-%Y%m%d-%H%M%S")),
        "out_dir": str(out) if out is not None else None,
        "data.root": data,
        "data.image_root": str(images) if images is not None else None,
        "data.overlap": overlap,
        "data.val_fraction": val_fraction,
        "data.augment": augment,
        "data.cache_dir": str(cache_dir) if cache_dir is not None else None,
        "data.image_size": image_size,
        "data.num_workers": num_workers,
        "train.deterministic": deterministic,
        "train.compile": compile_model,
        "model.name": model,
        "model.args": _model_args(cfg, model, model_arg),
        "model.encoder_bn": encoder_bn,
        "model.fcn_bn": fcn_bn,
        "model.decoder_bn": decoder_bn,
        "model.width": width,
        "model.fc_channels": fc_channels,
        "model.fc_kernel": fc_kernel,
        "model.dropout": dropout,
        "model.pretrained": pretrained,
        "model.weights_path": str(weights) if weights is not None else None,
        "optim.name": optimizer if optimizer is None or ":" not in optimizer else None,
        "optim.builder": optimizer if optimizer is not None and ":" in optimizer else None,
        "optim.f_lr_modules": _names(f_lr_modules),
        "optim.lr": lr,
        "optim.f_lr": f_lr,
        "optim.weight_decay": weight_decay,
        "optim.scheduler": scheduler,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "train.device": device,
        "train.inject_bug": inject_bug,
        "train.strict": strict,
        "train.audit": audit,
        "train.monitor": monitor,
        "train.monitor_steps": monitor_steps,
        "train.stop_never_updated": stop_never_updated,
        "tracking.backend": tracking,
        "tracking.project": wandb_project,
        "tracking.entity": wandb_entity,
        "tracking.log_model": log_model,
    }
    if optimizer is not None and ":" not in optimizer and cfg.optim.builder is not None:
        # a built-in name given here replaces the config file's builder
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, builder=None))
    cfg = with_overrides(cfg, overrides)

    from harness.fit import distributed, fit
    from harness.plugins import UserCodeError

    if nproc is not None and distributed.launched():
        raise HarnessError(f"--nproc={nproc}: this process is already one of torchrun's ranks")
    if nproc is not None and nproc != 1:
        _launch_trial(cfg, nproc, quiet=quiet, verbose=verbose)
    dist = distributed.from_env(cfg.train.device)  # a rank under torchrun, else None
    main_rank = dist is None or dist.is_main
    console = None if quiet or not main_rank else _console()
    from_sweep = main_rank and SWEEP_LINK_ENV in os.environ
    try:
        callbacks, tracker = _trial_links(cfg, console, main_rank, from_sweep)
        result = fit(cfg, console=console, callbacks=callbacks, tracker=tracker, dist=dist)
    except UserCodeError as exc:
        exc.verbose = verbose  # cli.main prints the user code's traceback
        raise
    except Exception as exc:
        if dist is None or isinstance(exc, HarnessError):
            raise
        # fit has recorded it; a rank that lost its peers says so in one line, not a traceback
        _error(f"rank {dist.rank}: trial failed: {type(exc).__name__}: {str(exc)[:300]}")
        if verbose:
            traceback.print_exc()
        raise typer.Exit(1) from None
    finally:
        distributed.teardown(dist)
    if not main_rank or from_sweep:
        # the other ranks stay quiet; a sweep's worker prints its own line per trial
        raise typer.Exit(1 if result.status == "failed" else 0)
    line = (
        f"{result.status}: best val/mIoU {result.best_miou:.4f} at epoch {result.best_epoch}, "
        f"{result.wall_time_s:.1f}s, run folder {result.run_dir}"
    )
    if result.flags:
        line += f"  flags: {', '.join(result.flags)}"
    (console or _console()).print(line, soft_wrap=True)
    if result.status == "failed":
        raise typer.Exit(1)


def _trial_links(
    cfg: TrialConfig, console: Any, main_rank: bool, from_sweep: bool
) -> tuple[list[Any], Any]:
    """The callbacks and tracker of ``fit``: a sweep's pruning and W&B group when a sweep
    started this trial on several processes (rank 0 reports to the study itself), else none
    and the tracker the config names. Other ranks: none (``fit`` gives them a silent tracker)."""
    from harness.tracking import make_tracker

    if not main_rank:
        return [], None
    if from_sweep:  # optuna is imported only then: a plain trial starts as fast as before
        from harness.sweep.linked import linked_trial

        return linked_trial(cfg, console)
    return [], make_tracker(cfg, console)


def _launch_trial(cfg: TrialConfig, nproc: int, *, quiet: bool, verbose: bool) -> None:
    """``harness trial --nproc N``: the ranks under torchrun, then the reason a rank died (which
    only the launcher knows) written into summary.json; exits with the trial's code."""
    import torch

    from harness.fit.launch import check_nproc, exit_code, launch_trial, settle
    from harness.fit.record import ensure_free

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check_nproc(nproc, cfg.train.device, cuda)
    ensure_free(cfg.run_dir)
    on_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and cuda > 0)
    where = "one per GPU, nccl" if on_gpu else "on the CPU, gloo"
    result = launch_trial(
        cfg,
        nproc,
        [*(["-q"] if quiet else []), *(["-v"] * verbose)],
        announce=lambda cmd: print(f"starting {nproc} processes ({where}): {cmd}", flush=True),
    )
    summary, reason = settle(cfg.run_dir, result)
    status = None if summary is None else summary.get("status")
    if result.failures:
        folder = f"run folder {cfg.run_dir}" if summary is not None else "no run record"
        _error(f"failed: {reason or 'see the output of the ranks above'} ({folder})")
    raise typer.Exit(exit_code(result, status))


def _model_args(cfg: TrialConfig, model: str | None, pairs: list[str] | None) -> Any:
    """``--model-arg KEY=VALUE`` (VALUE read as a YAML scalar) over the config file's
    ``model.args``; a different ``--model`` starts from none (args belong to their factory)."""
    if not pairs:
        return {} if model is not None and model != cfg.model.name else None
    args = dict(cfg.model.args) if model is None or model == cfg.model.name else {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise HarnessError(f"--model-arg {pair!r}: must be KEY=VALUE with KEY a Python name")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        if isinstance(value, dict | list):
            raise HarnessError(
                f"--model-arg {pair!r}: VALUE must be a scalar (a list or mapping goes in the "
                "config file's model.args)"
            )
        args[key.strip()] = value
    return args


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write (must be empty or missing).")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives identical files.")] = 0,
    n_train: Annotated[int, typer.Option(help="Training images.")] = 240,
    n_val: Annotated[int, typer.Option(help="Validation images.")] = 60,
    n_test: Annotated[int, typer.Option(help="Test images (no annotations).")] = 30,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
) -> None:
    """Write the built-in synthetic COCO dataset (trash-like objects, overlaps, RLE)."""
    from harness.data.synth import generate

    for opt, value, low in (
        ("--n-train", n_train, 1),
        ("--n-val", n_val, 1),
        ("--n-test", n_test, 0),
        ("--size", size, 32),
    ):
        if value < low:
            raise HarnessError(f"{opt}={value}: must be >= {low}")
    start = time.perf_counter()
    generate(out, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, size=size)
    print(
        f"wrote {n_train}/{n_val}/{n_test} train/val/test images to {out} "
        f"in {time.perf_counter() - start:.1f}s"
    )


EDA_EXAMPLES = """
Examples:

    harness eda                                     # the built-in dataset

    harness eda --data ../shared/data/fruits_nuts/data --out runs/eda/fruits

    harness eda --data export/annotations.json --images export/JPEGImages
"""


@app.command(epilog=EDA_EXAMPLES)
def eda(
    data: Annotated[
        str | None,
        typer.Option(help="COCO folder or annotation file; default: the built-in dataset."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Image folder, when the images are not where the layout puts them "
            "(e.g. JPEGImages/); file_name is relative to it."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Report folder (its report files are replaced); default: runs/eda/<dataset name>."
        ),
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Val share when the data has no split (0.2).")
    ] = None,
    split_seed: Annotated[int | None, typer.Option(help="Seed of that split (0).")] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Built-in dataset and mask cache, read for the sample masks (runs/cache)."
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option(help="Images in the grid of masks under each overlap policy.")
    ] = 6,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Know the data: statistics, overlapping labels per policy, one self-contained HTML report."""
    from harness.config import DataConfig
    from harness.data.synth import ensure_builtin
    from harness.eda import dataset_name
    from harness.report.eda import run_eda, summary_lines

    defaults = DataConfig()
    cache = cache_dir if cache_dir is not None else Path(defaults.cache_dir)
    root = Path(data) if data is not None else ensure_builtin(cache)
    folder = out if out is not None else Path("runs") / "eda" / dataset_name(root)
    result, report = run_eda(
        root,
        folder,
        val_fraction=defaults.val_fraction if val_fraction is None else val_fraction,
        split_seed=defaults.split_seed if split_seed is None else split_seed,
        image_root=images,
        cache_dir=cache,
        n_samples=samples,
        progress=not quiet,
    )
    for warning in result.warnings:
        print(f"WARNING {warning}", file=sys.stderr)
    print("\n".join(summary_lines(result, report)))


PREDICT_EXAMPLES = """
Examples:

    harness predict runs/my-run                     # the test split -> runs/my-run/predict-test/

    harness predict runs/my-run --data ../data --split test --tta flip

    harness predict runs/my-run/best.pt --split val --out preds/val --format csv
"""


@app.command(epilog=PREDICT_EXAMPLES)
# long: the typer option declarations; the body is one predict call and its report
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder (its best.pt) or a checkpoint file.")],
    data: Annotated[
        str | None,
        typer.Option(help="COCO folder or annotation file; default: the data the run trained on."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to predict (test, val, train).")] = "test",
    images: Annotated[
        Path | None,
        typer.Option(
            help="Image folder, when the images are not where the layout puts them; default: "
            "the run's data.image_root when --data is not given."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (must not exist); default: RUN/predict-SPLIT/."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="What to write, comma-separated: csv (submission.csv), png (masks/)."
        ),
    ] = "csv,png",
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation: none, or flip (horizontal).")
    ] = "none",
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size; default: the run's train.batch_size.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N; default: the run's train.device.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Your model factory package.module:function, when the run trained one: "
            "harness imports it only when you name it."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Predict a split with a run's best.pt: the submission CSV and one palette PNG per image."""
    from harness.predict import metric_lines
    from harness.predict import predict as run_predict

    result = run_predict(
        run,
        data=data,
        split=split,
        images=images,
        out=out,
        formats=fmt,
        tta=tta,
        batch_size=batch_size,
        device=device,
        progress=not quiet,
        on_start=None if quiet else lambda line: print(line, flush=True),
        model=model,
    )
    for line in metric_lines(result, result.checkpoint.cfg.data.image_size):
        print(line)
    pngs = sum(1 for f in result.files if f.endswith(".png"))
    wrote = []
    if "submission.csv" in result.files:
        wrote.append(f"{result.out / 'submission.csv'} ({result.n_images} rows)")
    if pngs:
        wrote.append(f"{pngs} PNGs under {result.out / 'masks'}")
    print(f"wrote {' and '.join(wrote)}")


SWEEP_EXAMPLES = """
Examples:

    harness sweep                                   # sweeps/default.yaml, runs/default/study.db

    harness sweep sweeps/default.yaml --n-trials 20 # resume the same study up to 20 trials

    harness sweep --workers 2                       # two worker processes share the study

    harness sweep sweeps/trash-deconvnet.yaml --gpus 0,1,2,3   # one worker per GPU

    harness sweep sweeps/trash-deconvnet.yaml --nproc-per-trial 2   # trials on 2 GPUs each (DDP)

    harness sweep sweeps/trash-deconvnet.yaml --storage postgresql://user:pass@host/db
"""


@app.command(epilog=SWEEP_EXAMPLES)
# long: the typer option declarations; the body builds the spec and runs it
def sweep(
    file: Annotated[
        Path, typer.Argument(help="Sweep file (search space, sampler, pruner, trial settings).")
    ] = Path("sweeps/default.yaml"),
    n_trials: Annotated[
        int | None,
        typer.Option(
            help="The TOTAL number of trials (finished + pruned) the study should reach, "
            "counting earlier runs: re-running the same command resumes the study."
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: the sweep file's).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL (postgresql://...) shared by every worker on every machine; "
            "default: the SQLite file runs/STUDY/study.db."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes on this machine, sharing the study (default: one per "
            "visible GPU, or one on the CPU; more workers than GPUs share them round-robin)."
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPUs for the workers, e.g. 0,1,2,3: each worker gets one as its "
            "CUDA_VISIBLE_DEVICES (default: every visible GPU)."
        ),
    ] = None,
    nproc_per_trial: Annotated[
        int,
        typer.Option(
            help="Processes per trial (DistributedDataParallel, as harness trial --nproc): each "
            "worker gets that many GPUs; rank 0 reports to the study, so pruning works as usual."
        ),
    ] = 1,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after this many seconds.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Parent folder of runs/STUDY/.")] = None,
    sampler_seed: Annotated[
        int | None,
        typer.Option(
            help="The sampler's seed (default: the sweep file's sampler.seed); for a new "
            "study: a resumed one keeps the trials it has."
        ),
    ] = None,
    tracking: Annotated[
        str | None,
        typer.Option(help="Trial tracking (" + ", ".join(TRACKING_BACKENDS) + ")."),
    ] = None,
    audit: Annotated[
        bool | None,
        typer.Option(
            "--audit/--no-audit",
            help="Param-group audit flags in every trial (default: the sweep file's, on).",
        ),
    ] = None,
    monitor: Annotated[
        bool | None,
        typer.Option(
            "--monitor/--no-monitor",
            help="Update monitor and learning check in every trial (default: the sweep file's, "
            "on). With --no-audit, only the study-level outlier detector flags trials.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Each trial's full output (audit table, epoch lines), as harness trial prints "
            "it; default: one line per trial and a live display of the running one.",
        ),
    ] = False,
) -> None:
    """Run (or resume) an Optuna study of trials; writes runs/STUDY/best.yaml as it goes."""
    from harness.config.sweep import load_spec, with_options
    from harness.sweep import BEST_FILE, run_sweep, trials_of

    if workers is not None and workers < 1:
        raise HarnessError(f"--workers={workers}: must be >= 1")
    spec = with_options(
        load_spec(file),
        n_trials=n_trials,
        study=study,
        storage=storage,
        timeout=timeout,
        out=str(out) if out is not None else None,
        sampler_seed=sampler_seed,
        trial_overrides={
            "tracking.backend": tracking,
            "train.audit": audit,
            "train.monitor": monitor,
        },
    )
    console = _console()
    try:
        study_obj = run_sweep(
            spec,
            workers=workers,
            gpus=gpus,
            console=None if quiet else console,
            verbose=verbose,
            nproc_per_trial=nproc_per_trial,
        )
    except KeyboardInterrupt:
        # typer turns Ctrl-C into a silent exit 130; say what happened and how to go on
        _error(
            f"interrupted: the running trial is recorded as failed; run the same command "
            f"to resume study {spec.study}"
        )
        raise typer.Exit(130) from None
    _print_trials(console, trials_of(study_obj), f"study {spec.study}")
    best_path = spec.study_dir / BEST_FILE
    if best_path.exists():
        _print_best(console, best_path)
    else:
        console.print("no finished, unflagged trial yet: no best.yaml")


def _print_trials(console: Console, trials: list[Any], title: str) -> None:
    from harness.sweep import evidence_lines, flagged_traits, trial_table

    console.print(trial_table(trials, title=title))
    lines = evidence_lines(trials)
    if lines:
        console.print("[bold]flags[/] (evidence):")
        for line in lines:
            console.print(f"  {line}", markup=False, soft_wrap=True)
    traits = flagged_traits(trials)
    if traits:
        console.print("[bold]what the flagged trials share[/]:")
        for line in traits:
            console.print(f"  {line}", markup=False, soft_wrap=True)


def _print_best(console: Console, path: Path) -> None:
    from harness.sweep import read_best

    _, header = read_best(path)
    console.print(
        f"best: trial {header.get('trial')}, val/mIoU {float(header.get('val_mIoU', 'nan')):.4f}"
        f" ({path})",
        soft_wrap=True,
    )
    console.print(f"reproduce: harness trial --config {path}", soft_wrap=True, markup=False)


@app.command()
def best(
    study: Annotated[str, typer.Argument(help="Study name (folder runs/STUDY/).")],
    all_trials: Annotated[
        bool, typer.Option("--all", help="Also print the table of every trial.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Parent folder of runs/STUDY/.")] = Path("runs"),
    storage: Annotated[
        str | None, typer.Option(help="Storage URL, for a study not kept in runs/STUDY/.")
    ] = None,
) -> None:
    """Print the best config of a study and the command that reproduces it."""
    from harness.secrets import mask_url
    from harness.sweep import BEST_FILE, best_text, load_study, trials_of

    console = _console()
    path = out / study / BEST_FILE
    if storage is not None:  # the study's own storage says which trial is best, not a file
        trials = trials_of(load_study(study, out=str(out), storage=storage))
        text = best_text(study, trials, out_dir=str(out), path=Path(f"{study}-best.yaml"))
        if text is None and not all_trials:
            raise HarnessError(
                f"study {study}: no finished, unflagged trial in {mask_url(storage)}"
            )
        if text is not None:
            console.print(text, markup=False, soft_wrap=True)
            console.print(
                f"(from {mask_url(storage)}) reproduce: save the config above as "
                f"{study}-best.yaml, then harness trial --config {study}-best.yaml",
                soft_wrap=True,
                markup=False,
            )
        if all_trials:
            _print_trials(console, trials, f"study {study}")
        return
    if path.exists():
        console.print(path.read_text(), markup=False, soft_wrap=True)
        _print_best(console, path)
    elif not all_trials:
        raise HarnessError(f"study {study}: no {path} (no finished, unflagged trial yet?)")
    if all_trials:
        study_obj = load_study(study, out=str(out), storage=storage)
        _print_trials(console, trials_of(study_obj), f"study {study}")


@app.command()
def dashboard(
    study: Annotated[str, typer.Argument(help="Study name (folder runs/STUDY/).")],
    out: Annotated[Path, typer.Option(help="Parent folder of runs/STUDY/.")] = Path("runs"),
    storage: Annotated[
        str | None, typer.Option(help="Storage URL, for a study not kept in runs/STUDY/.")
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
) -> None:
    """Start optuna-dashboard on the study's storage, on 127.0.0.1 (Ctrl-C stops it)."""
    from harness.secrets import mask_url
    from harness.sweep import load_study

    if not 1 <= port <= 65535:
        raise HarnessError(f"--port={port}: must be 1-65535")
    study_obj = load_study(study, out=str(out), storage=storage)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise HarnessError(
            "optuna-dashboard is not installed (pip install optuna-dashboard)"
        ) from None
    url = storage or str(out / study / "study.db")
    print(f"optuna-dashboard for study {study} ({mask_url(url)}): http://127.0.0.1:{port}/")
    try:
        run_server(study_obj._storage, host="127.0.0.1", port=port)
    except OSError as exc:  # the port is taken, or not ours to bind
        raise HarnessError(f"--port={port}: cannot serve on it ({exc.strerror or exc})") from None


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study name (folder runs/STUDY/).")],
    out: Annotated[Path, typer.Option(help="Parent folder of runs/STUDY/.")] = Path("runs"),
    storage: Annotated[
        str | None, typer.Option(help="Storage URL, for a study not kept in runs/STUDY/.")
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Option(
            help="Report folder (its report files are replaced); default: runs/STUDY/report."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Your model factory package.module:function, when the best trial trained one: "
            "harness imports it (to predict its masks) only when you name it."
        ),
    ] = None,
) -> None:
    """One self-contained HTML report of a study (charts, flags with evidence, best masks)."""
    from harness.report.study import write_report

    print(write_report(study, out=out, storage=storage, dest=dest, model=model))


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Smaller sizes, for a smoke run.")] = False,
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated benchmarks to run: a (mask cache), b (fit overhead), "
            "c (W&B overhead), d (pruning), eda, outliers (study-level detector, simulated), "
            "gpu (the GPU check; only when named). Default: all but gpu."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="The GPU check's device: cuda (default), cuda:N, or cpu (small model)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="The GPU check writes gpu-check.json and gpu-check.txt here."),
    ] = None,
) -> None:
    """Benchmarks, each a ratio measured in one run: (a) mask cache vs pycocotools decoding,
    (b) fit vs a bare PyTorch loop, (c) W&B offline vs no tracking, (d) median pruning vs none
    on the default study, (eda) harness eda on a competition-sized set, (outliers) the study-level
    detector on simulated studies; (gpu) the GPU check (paper-size DeconvNet at 512)."""
    from harness.bench import BENCHMARKS, GPU_CHECK

    names: tuple[str, ...] = BENCHMARKS
    if only is not None:
        names = tuple(n.strip() for n in only.split(",") if n.strip())
        unknown = [n for n in names if n not in (*BENCHMARKS, GPU_CHECK)]
        if unknown or not names:
            raise HarnessError(
                f"--only: {', '.join(unknown) or repr(only)} is not a benchmark "
                f"(choose from {', '.join((*BENCHMARKS, GPU_CHECK))})"
            )
    if GPU_CHECK not in names and (device is not None or out is not None):
        flag = "--device" if device is not None else "--out"
        raise HarnessError(f"{flag}: only for the GPU check (--only gpu)")
    if out is not None:  # before the check runs, not after: its result would be lost
        from harness.files import check_folder

        check_folder(out, "--out")
    rest = [n for n in names if n != GPU_CHECK]
    if rest:  # these need Optuna and W&B; the GPU check needs neither, so it runs on a bare box
        from harness.bench.run import run_benchmarks

        run_benchmarks(quick=quick, only=rest)
    if GPU_CHECK in names:
        from harness.bench.gpu_report import run_gpu_check

        run_gpu_check(device=device or "cuda", quick=quick, out=out)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        print(f"harness {__version__}")
        raise typer.Exit()


def _console() -> Console:
    # Off a terminal (a log, CI, `make sweep | tee`) rich assumes 80 columns and squeezes the
    # trial table into unreadable slivers; a wide fixed width keeps each row on one line.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2 for anything the user can fix."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _error("interrupted")
        return 130
    except typer.TyperException as exc:  # bad options: typer's (vendored click) usage errors
        _error(f"error: {exc.format_message()}")  # type: ignore[attr-defined]
        return 2
    except HarnessError as exc:
        rank = os.environ.get("RANK", "0") if "TORCHELASTIC_RUN_ID" in os.environ else "0"
        _error(f"{'' if rank == '0' else f'rank {rank}: '}error: {exc}")
        if getattr(exc, "verbose", False) and exc.__cause__ is not None:
            cause = exc.__cause__  # the user code's own exception (harness trial --verbose)
            print("".join(traceback.format_exception(cause)), file=sys.stderr, end="")
        return 2
    return rc if isinstance(rc, int) else 0


def _error(message: str) -> None:
    # plain print, not rich: no wrapping (one line) and no markup interpretation
    print(" ".join(message.split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
