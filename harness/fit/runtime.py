"""What a trial runs with beyond its config: the resolved runtime settings, recorded with the run.

Several config keys are ``None`` for "auto" (``data.num_workers``, ``data.pin_memory``,
``data.persistent_workers``, ``train.deterministic``); what they resolve to depends on the device
and the machine, so ``resolve_runtime`` (a pure function of those) decides once per trial and the
result goes to ``summary.json`` (``runtime``) and the W&B config. On the CPU every auto value
resolves to what the harness always did (no loader workers, nothing pinned), so CPU results are
unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.config import TrialConfig
from harness.errors import HarnessError

MAX_AUTO_WORKERS = 8  # DataLoader workers on CUDA, at most (more rarely helps at these sizes)


@dataclass(frozen=True)
class Runtime:
    device: str  # as the machine numbers it: cpu, cuda:2 (through CUDA_VISIBLE_DEVICES)
    torch_device: str  # as this process sees it: cpu, cuda:0
    cuda_visible_devices: str | None  # this process's CUDA_VISIBLE_DEVICES, on CUDA
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    deterministic: bool  # same seed, same device: the same numbers
    cudnn_benchmark: bool
    amp: str | None  # autocast dtype (bfloat16, float16), None without autocast
    channels_last: bool
    compile: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def auto_num_workers(device_type: str, cores: int) -> int:
    """0 on the CPU (the trial's own threads do the work); on CUDA this process's cores, 1-8."""
    if device_type != "cuda":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, cores))


def amp_dtype(enabled: bool, *, cuda: bool, bf16: bool) -> str | None:
    """``train.amp``'s autocast dtype: bfloat16 where the GPU has it, else float16; None off
    CUDA (autocast is for the GPU's tensor cores here)."""
    if not (enabled and cuda):
        return None
    return "bfloat16" if bf16 else "float16"


def physical_device(device: torch.device | str, env_visible: str | None) -> str:
    """``cuda:0`` under ``CUDA_VISIBLE_DEVICES=2,3`` is the machine's ``cuda:2``; the CPU is
    ``cpu``. Without the variable (or with GPU UUIDs in it) the index is the machine's own or
    the UUID is shown."""
    device = torch.device(device)
    if device.type != "cuda":
        return str(device)
    index = device.index or 0
    ids = [s.strip() for s in (env_visible or "").split(",") if s.strip()]
    if not ids or index >= len(ids):
        return f"cuda:{index}"
    return f"cuda:{ids[index]}" if ids[index].isdigit() else ids[index]


def resolve_runtime(
    cfg: TrialConfig,
    device: torch.device | str,
    *,
    cores: int,
    bf16: bool,
    env_visible: str | None,
) -> Runtime:
    """The runtime settings of a trial on ``device`` with ``cores`` CPU threads of its own."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    data, train = cfg.data, cfg.train
    workers = (
        data.num_workers if data.num_workers is not None else auto_num_workers(device.type, cores)
    )
    persistent = data.persistent_workers if data.persistent_workers is not None else workers > 0
    deterministic = train.deterministic if train.deterministic is not None else not cuda
    return Runtime(
        device=physical_device(device, env_visible),
        torch_device=str(device),
        cuda_visible_devices=env_visible if cuda else None,
        num_workers=workers,
        pin_memory=data.pin_memory if data.pin_memory is not None else cuda,
        persistent_workers=persistent and workers > 0,
        deterministic=deterministic,
        cudnn_benchmark=cuda and not deterministic,
        amp=amp_dtype(train.amp, cuda=cuda, bf16=bf16),
        channels_last=train.channels_last and cuda,
        compile=train.compile,
    )


def trial_runtime(cfg: TrialConfig, device: torch.device) -> Runtime:
    """``resolve_runtime`` for this process: its thread share, the device's bf16 support and
    ``CUDA_VISIBLE_DEVICES`` (what ``fit`` and the benchmarks' bare loop both train with)."""
    return resolve_runtime(
        cfg,
        device,
        cores=torch.get_num_threads(),  # a sweep worker's share of the machine
        bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
        env_visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def apply_cudnn(runtime: Runtime) -> None:
    """cuDNN's two switches, on CUDA only. Never ``torch.use_deterministic_algorithms(True)``:
    MaxUnpool2d has no deterministic CUDA kernel and would raise (pytorch#78249)."""
    if runtime.torch_device.startswith("cuda"):
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
        torch.backends.cudnn.deterministic = runtime.deterministic


def compiled(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The module that runs the forward pass: ``torch.compile(model)`` with ``train.compile``,
    else the model itself. The optimiser, the checks and the checkpoint keep the plain model
    (its parameter names have no ``_orig_mod.`` prefix)."""
    if not runtime.compile:
        return model
    try:
        return torch.compile(model)  # type: ignore[return-value]
    except Exception as exc:  # e.g. an unsupported Python version
        message = f"train.compile=true: torch.compile refused the model ({_line(exc)})"
        raise HarnessError(message) from exc


def compile_error(exc: BaseException) -> HarnessError | None:
    """A torch.compile failure during the first steps (a missing C++ compiler or Triton), as one
    line; None for any other error."""
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    if not isinstance(exc, TorchDynamoException):
        return None
    return HarnessError(
        f"train.compile=true: torch.compile failed ({_line(exc)}); "
        "set train.compile=false or install the compiler it names"
    )


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((t.strip() for t in text if t.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300]
