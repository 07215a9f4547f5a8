"""(gpu) The GPU check, ``harness bench --only gpu`` (``scripts/gpu-check.sh`` on a lent machine).

In one run, on the paper-size DeconvNet (VGG16 width 1, fc6 4096 with a 7x7 kernel, 252M
parameters) at 512x512, batch 8:

- ``fit``'s training images/s vs a bare PyTorch loop over the same model, batches (the built-in
  dataset through the same loaders) and settings (``bench/bare.py``), in alternating rounds;
  each round's first epoch is warm-up (loader start, cuDNN's autotuning) and not counted;
- bf16 autocast + channels_last vs fp32 contiguous (the course baseline's way), each a bare
  training step on one fixed batch already on the device, in alternating rounds (and beside
  them the bare loop's rate with its loader: far below, the loader sets the pace);
- model FLOPs utilisation: the FLOPs of one training step (forward and backward, counted by
  ``torch.utils.flop_counter.FlopCounterMode``) over the step time and the device's peak
  (``PEAKS``; an unknown device says so instead of guessing);
- MaxUnpool2d under bf16 + channels_last against fp32 contiguous (``bench/unpool.py``);
- peak memory of each (``torch.cuda.max_memory_allocated`` above what was held before);
- the device, the versions and the settings used.

``--device cpu`` or ``--quick`` runs the same code on a small model (width 0.125, 64 px, a few
steps), so that the test suite runs it on the CPU. The text report is ``gpu_report.py``.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from harness.bench.bare import bare_loop_throughput
from harness.bench.unpool import UnpoolReport, check_unpool, dtype_name
from harness.config import TrialConfig, with_overrides
from harness.data.dataset import DataBundle
from harness.data.loaders import load_data, make_loaders
from harness.errors import HarnessError
from harness.fit import fit, resolve_device, seed_everything
from harness.fit.loop import synchronize
from harness.fit.runtime import apply_cudnn, trial_runtime
from harness.models import build_model
from harness.optim import build_optimizer

FIT_TARGET = 0.95  # fit's images/s over the bare loop's (issue 13)


@dataclass(frozen=True)
class Peak:
    """A device's dense peak in TFLOP/s from its vendor's data sheet (fp16 = bf16 on these)."""

    name: str
    bf16: float
    tf32: float
    fp32: float


# most specific first: "H200 NVL" before "H200", "L40S" before "L4"
PEAKS: tuple[tuple[str, Peak], ...] = (
    (r"\bH200 NVL\b", Peak("H200 NVL", 835.5, 417.5, 60.0)),
    (r"\bH200\b", Peak("H200 SXM", 989.4, 494.7, 66.9)),
    (r"\bH100 NVL\b", Peak("H100 NVL", 835.5, 417.5, 60.0)),
    (r"\bH100 PCIe\b", Peak("H100 PCIe", 756.5, 378.0, 51.2)),
    (r"\bH100\b", Peak("H100 SXM", 989.4, 494.7, 66.9)),
    (r"\bA100\b", Peak("A100", 312.0, 156.0, 19.5)),
    (r"\bL40S\b", Peak("L40S", 362.0, 183.0, 91.6)),
    (r"\bL4\b", Peak("L4", 121.0, 60.0, 30.3)),
    (r"\bA10\b", Peak("A10", 125.0, 62.5, 31.2)),
)


def peak_for(device_name: str) -> Peak | None:
    """The table's entry for a ``torch.cuda.get_device_name()``; None: not known here."""
    for pattern, peak in PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


@dataclass(frozen=True)
class CheckSettings:
    device: str  # cuda, cuda:N or cpu
    image_size: int
    batch_size: int
    width: float
    fc_channels: int
    fc_kernel: int
    rounds: int  # alternating rounds of each comparison
    epochs: int  # per fit / bare-loop round; the first is warm-up
    warmup_steps: int  # fixed-batch steps before timing (cuDNN's autotuning happens here)
    timed_steps: int  # fixed-batch steps per timed round
    data_root: str | None = None  # None: the built-in dataset
    paper_size: bool = True


def check_settings(device: str, quick: bool) -> CheckSettings:
    """The paper-size run on a GPU; the small one on the CPU or with ``--quick``."""
    if quick or device == "cpu":
        return CheckSettings(device, 64, 8, 0.125, 32, 2, 1, 2, 1, 2, paper_size=False)
    return CheckSettings(device, 512, 8, 1.0, 4096, 7, 3, 3, 5, 10)


def check_config(s: CheckSettings, work: Path) -> TrialConfig:
    """The trial ``fit`` runs: configs/paper-512.yaml's model and optimiser at the settings'
    size, random weights (speed does not depend on them), nothing tracked or checkpointed."""
    return with_overrides(
        TrialConfig(),
        {
            "name": "gpu-check",
            "out_dir": str(work / "runs"),
            "data.root": s.data_root,
            "data.cache_dir": str(work / "cache"),
            "data.image_size": s.image_size,
            "model.width": s.width,
            "model.fc_channels": s.fc_channels,
            "model.fc_kernel": s.fc_kernel,
            "optim.lr": 1e-4,
            "optim.f_lr": 1e-5,
            "train.batch_size": s.batch_size,
            "train.epochs": s.epochs,
            "train.device": s.device,
            "train.checkpoint": False,
            "tracking.backend": "none",
        },
    )


@dataclass(frozen=True)
class Throughput:
    label: str
    img_per_s: float  # median of the timed samples
    samples: tuple[float, ...]  # images/s of each timed epoch or round
    peak_memory_bytes: int | None  # None on the CPU (torch does not track it there)


@dataclass(frozen=True)
class Comparison:
    name: str
    test: Throughput
    base: Throughput
    target: float | None = None  # test / base must reach it; None: no target, a figure

    @property
    def ratio(self) -> float:
        return self.test.img_per_s / self.base.img_per_s

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


@dataclass(frozen=True)
class Utilisation:
    label: str
    math: str  # the peak it is measured against: bf16, tf32 or fp32
    step_s: float
    tflops: float  # achieved: step FLOPs / step time
    peak_tflops: float | None  # None: peak unknown for this device

    @property
    def mfu(self) -> float | None:
        return None if self.peak_tflops is None else self.tflops / self.peak_tflops


@dataclass(frozen=True)
class GpuReport:
    environment: dict[str, Any]
    settings: dict[str, Any]
    step_flops: int
    fit_vs_bare: Comparison
    precision: Comparison
    # the bare loop with its loader vs the same setting on one batch already on the device: well
    # below 1, the loader (not the GPU) sets the pace of fit and the bare loop alike
    loader: Comparison
    utilisation: tuple[Utilisation, ...]
    unpool: UnpoolReport
    wall_s: float

    @property
    def passed(self) -> bool:
        return bool(self.fit_vs_bare.passed) and self.unpool.passed

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("fit_vs_bare", "precision", "loader"):
            c = getattr(self, key)
            out[key] |= {"ratio": c.ratio, "passed": c.passed}
        for row, u in zip(out["utilisation"], self.utilisation, strict=True):
            row["mfu"] = u.mfu
        out["unpool"]["passed"] = self.unpool.passed
        for p, r in zip(out["unpool"]["pools"], self.unpool.pools, strict=True):
            p["passed"] = r.passed
        out["passed"] = self.passed
        return out


class PeakMemory:
    """The largest CUDA allocation inside the block, above what was allocated before it; a
    block entered again keeps the largest of its runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None
        self._base = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.bytes = max(peak, self.bytes or 0)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fit_vs_bare(cfg: TrialConfig, bundle: DataBundle, rounds: int) -> Comparison:
    """Alternating rounds (bare, fit, bare, fit, ...) of ``cfg.train.epochs`` epochs each; the
    median timed epoch of each side. ``fit`` runs everything it always runs (its checks, the
    update monitor, one evaluation per epoch, the run record); its img/s is the training pass's."""
    device = resolve_device(cfg.train.device)
    bare: list[float] = []
    fitted: list[float] = []
    bare_mem, fit_mem = PeakMemory(device), PeakMemory(device)
    for r in range(rounds):
        with bare_mem:
            bare += bare_loop_throughput(cfg, bundle, cfg.train.epochs)[1:]  # 1st: warm-up
        free_memory(device)
        with fit_mem:
            result = fit(dataclasses.replace(cfg, name=f"gpu-check-{r}"), data=bundle)
        if result.status != "finished":
            raise HarnessError(f"gpu check: fit's trial ended {result.status}: {result.reason}")
        fitted += [row["time/train_img_per_s"] for row in result.history[1:]]
        free_memory(device)
    return Comparison(
        "fit vs bare loop",
        Throughput("fit", statistics.median(fitted), tuple(fitted), fit_mem.bytes),
        Throughput("bare loop", statistics.median(bare), tuple(bare), bare_mem.bytes),
        target=FIT_TARGET,
    )


@dataclass
class Trainer:
    """One model and optimiser trained on a fixed batch in one precision and memory format."""

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dtype: torch.dtype | None  # autocast dtype; None: fp32, no autocast
    images: Tensor  # the batch in this trainer's memory format
    masks: Tensor
    ignore_index: int
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    peak_memory_bytes: int | None = None

    @property
    def math(self) -> str:
        if self.dtype is not None:
            return "bf16"  # fp16's peak is bf16's on every device of the table
        # PyTorch lets cuDNN run fp32 convolutions on TF32 tensor cores unless told not to
        cuda = self.images.device.type == "cuda"
        return "tf32" if cuda and torch.backends.cudnn.allow_tf32 else "fp32"

    def loss(self) -> Tensor:
        device_type = self.images.device.type
        # as fit: the loss inside autocast too (which computes cross-entropy in fp32)
        with torch.autocast(device_type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(self.images)
            return nn.functional.cross_entropy(logits, self.masks, ignore_index=self.ignore_index)

    def step(self) -> None:
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def make_trainer(
    cfg: TrialConfig,
    bundle: DataBundle,
    batch: tuple[Tensor, Tensor],
    dtype: torch.dtype | None,
    channels_last: bool,
) -> Trainer:
    device = batch[0].device
    seed_everything(cfg.train.seed)  # both settings start from the same weights
    model = build_model(cfg.model, num_classes=bundle.num_classes).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    name = "fp32" if dtype is None else dtype_name(dtype)
    label = f"{name}{'+channels_last' if channels_last else ' contiguous'}"
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    images = batch[0].contiguous(memory_format=memory_format)
    opt = build_optimizer(model, cfg.optim)
    return Trainer(label, model, opt, dtype, images, batch[1], bundle.ignore_index, scaler)


def seconds_per_step(trainer: Trainer, steps: int) -> float:
    device = trainer.images.device
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def step_flops(loss: Callable[[], Tensor]) -> int:
    """FLOPs of one forward and backward pass (``loss()`` then its backward), as
    FlopCounterMode counts them (convolutions and matrix products; the optimiser's elementwise
    update is not counted, as is usual for MFU)."""
    with FlopCounterMode(display=False) as counter:
        loss().backward()
    return int(counter.get_total_flops())


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where supported (every CPU here, CUDA from Ampere on), else fp16, as fit chooses."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def compare_precision(
    cfg: TrialConfig, bundle: DataBundle, batch: tuple[Tensor, Tensor], s: CheckSettings
) -> tuple[Comparison, list[Trainer]]:
    """bf16 autocast + channels_last vs fp32 contiguous on one fixed batch: warm-up steps (and
    peak memory) for each, then alternating timed rounds; the median round of each."""
    device = batch[0].device
    trainers = []
    for dtype, channels_last in ((amp_dtype(device), True), (None, False)):
        with PeakMemory(device) as mem:
            trainer = make_trainer(cfg, bundle, batch, dtype, channels_last)
            for _ in range(s.warmup_steps):
                trainer.step()
        trainer.peak_memory_bytes = mem.bytes
        trainers.append(trainer)
    samples: dict[str, list[float]] = {t.label: [] for t in trainers}
    for r in range(s.rounds):
        for t in trainers if r % 2 == 0 else trainers[::-1]:
            samples[t.label].append(s.batch_size / seconds_per_step(t, s.timed_steps))
    test, base = (
        Throughput(t.label, statistics.median(samples[t.label]), tuple(samples[t.label]),
                   t.peak_memory_bytes)
        for t in trainers
    )  # fmt: skip
    return Comparison(f"{test.label} vs {base.label}", test, base), trainers


def utilisation(
    flops: int, peak: Peak | None, batch_size: int, rates: list[tuple[str, str, float]]
) -> tuple[Utilisation, ...]:
    """MFU of each (label, math, images/s): FLOPs per step / step time / the peak for its math."""
    rows = []
    for label, math, img_per_s in rates:
        step_s = batch_size / img_per_s
        peak_tflops = getattr(peak, math) if peak is not None else None
        rows.append(Utilisation(label, math, step_s, flops / step_s / 1e12, peak_tflops))
    return tuple(rows)


def environment(device: torch.device) -> dict[str, Any]:
    """The device, the versions and the switches that decide the figures."""
    env: dict[str, Any] = {
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {
            "device": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    else:
        env["device"] = f"CPU ({platform.machine()}, {platform.processor() or 'unknown'})"
    peak = peak_for(env["device"]) if device.type == "cuda" else None
    env["peak"] = dataclasses.asdict(peak) if peak is not None else None
    return env


def check_device(name: str) -> torch.device:
    """``--device``: cpu, cuda or cuda:N, and CUDA must be there for the last two."""
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise HarnessError(f"--device {name!r}: must be cpu, cuda or cuda:N")
    if name != "cpu" and not torch.cuda.is_available():
        raise HarnessError(
            f"--device {name!r}: CUDA is not available on this machine "
            "(the small CPU run: --device cpu)"
        )
    return torch.device(name)


def run_check(s: CheckSettings, say: Callable[[str], None] = print) -> GpuReport:
    """The whole check; ``say`` gets a line as each part starts."""
    start = time.perf_counter()
    device = check_device(s.device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        cfg = check_config(s, Path(tmp))
        runtime = trial_runtime(cfg, device)
        apply_cudnn(runtime)  # before reading the environment: its cuDNN switches are fit's
        env = environment(device)
        say(f"device {env['device']}, torch {env['torch']}, CUDA {env['cuda']}")
        say("data: " + ("the built-in dataset" if s.data_root is None else s.data_root))
        bundle = load_data(cfg)
        say(f"fit vs bare loop: {s.rounds} alternating rounds of {s.epochs} epochs")
        overhead = fit_vs_bare(cfg, bundle, s.rounds)
        batch = fixed_batch(cfg, bundle, device)
        say(f"bf16 vs fp32: {s.warmup_steps} warm-up steps each, {s.rounds} rounds of "
            f"{s.timed_steps} steps")  # fmt: skip
        precision, trainers = compare_precision(cfg, bundle, batch, s)
        say("FLOPs of one training step (FlopCounterMode)")
        flops = step_flops(trainers[0].loss)
        trainers[0].optimizer.zero_grad(set_to_none=True)
        say("MaxUnpool2d: bf16+channels_last vs fp32 contiguous on the encoder's activations")
        unpool = check_unpool(trainers[1].model, batch[0], amp_dtype(device))
    peak = peak_for(env["device"]) if device.type == "cuda" else None
    fit_math = "bf16" if runtime.amp else trainers[1].math
    fit_like = precision.test if runtime.amp and runtime.channels_last else precision.base
    rates = [
        (precision.test.label, trainers[0].math, precision.test.img_per_s),
        (precision.base.label, trainers[1].math, precision.base.img_per_s),
        ("fit (its loader and settings)", fit_math, overhead.test.img_per_s),
    ]
    num_params = sum(p.numel() for p in trainers[0].model.parameters())
    settings = dataclasses.asdict(s) | {"num_params": num_params, "runtime": runtime.to_dict()}
    return GpuReport(
        environment=env,
        settings=settings,
        step_flops=flops,
        fit_vs_bare=overhead,
        precision=precision,
        loader=Comparison("bare loop: loader vs fixed batch", overhead.base, fit_like),
        utilisation=utilisation(flops, peak, s.batch_size, rates),
        unpool=unpool,
        wall_s=time.perf_counter() - start,
    )


def fixed_batch(
    cfg: TrialConfig, bundle: DataBundle, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The first training batch (real images and masks), on the device once."""
    loader, _ = make_loaders(bundle, cfg, num_workers=0, pin_memory=False, persistent_workers=False)
    images, masks = next(iter(loader))
    return images.to(device), masks.to(device)
