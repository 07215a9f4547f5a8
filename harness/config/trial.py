"""Trial configuration: frozen dataclasses, built once in the CLI and passed down.

A config comes from the dataclass defaults (a CPU-sized trial on the built-in dataset), then an
optional YAML file, then CLI overrides. Every value is validated where it is set, and each error
names the field, the value and the rule. ``to_dict`` of the result is what a run records and what
``harness trial --config`` reads back.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from harness.config.validate import check_choice, check_positive, coerce, fail
from harness.errors import ConfigError
from harness.plugins import is_import_path

OVERLAP_POLICIES = ("max-class", "area-desc", "ignore")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "poly")
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"  # what train.device and --device accept
MODELS = ("deconvnet", "deeplabv1")  # deeplabv1: DeepLab v1 LargeFOV (models/deeplabv1.py)
INJECTABLE_BUGS = (
    "encoder-only-optimizer",  # the story's optimiser: FCN, decoder and head never stepped
    "frozen-decoder",  # decoder requires_grad=False by mistake
    "zero-lr-decoder",  # the decoder's optimiser group has lr 0
    "shuffled-masks",  # training masks paired with the wrong images
)
# the injected bugs that build the optimiser themselves: not with a user's optim.builder
OPTIMIZER_BUGS = ("encoder-only-optimizer", "frozen-decoder", "zero-lr-decoder")
TRACKING_BACKENDS = ("wandb", "local", "none")
N_POOLS = 5  # VGG16 has five 2x2/2 max pools


def encoder_output_size(image_size: int) -> int:
    """Side of the feature map after the five ceil-mode pools of the encoder."""
    size = image_size
    for _ in range(N_POOLS):
        size = -(-size // 2)
    return size


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # None: the built-in synthetic dataset
    # every split's file_name relative to this folder (COCO Annotator/labelme JPEGImages/);
    # None: the layout's own image folders
    image_root: str | None = None
    overlap: str = "max-class"
    val_fraction: float = 0.2  # only for a single annotation file without splits
    split_seed: int = 0
    image_size: int = 96
    augment: bool = False  # the course baseline trained without; --augment turns it on
    # DataLoader workers; None: auto (0 on the CPU, up to 8 of this process's cores on CUDA)
    num_workers: int | None = None
    pin_memory: bool | None = None  # None: auto (on CUDA)
    persistent_workers: bool | None = None  # None: auto (when there are loader workers)
    cache_dir: str = "runs/cache"  # synthetic dataset and decoded masks

    def __post_init__(self) -> None:
        check_choice("data.overlap", self.overlap, OVERLAP_POLICIES)
        if not 0.0 < self.val_fraction < 1.0:
            fail("data.val_fraction", self.val_fraction, "must be strictly between 0 and 1")
        if self.image_size < 32:
            fail("data.image_size", self.image_size, "must be >= 32 (five 2x2 pools)")
        if self.num_workers is not None and self.num_workers < 0:
            fail("data.num_workers", self.num_workers, "must be >= 0")
        if self.persistent_workers and self.num_workers == 0:
            fail(
                "data.persistent_workers",
                self.persistent_workers,
                "needs data.num_workers > 0 (or null: auto)",
            )


def _check_import_path_or(name: str, value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices and not is_import_path(value):
        fail(name, value, f"must be one of {', '.join(choices)} or an import path {what}")


def _plain_mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        fail(name, value, "must be a mapping of keyword arguments")
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            fail(name, dict(value), f"key {key!r} is not a Python argument name")
    return dict(value)


def _module_names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        fail(name, value, "must be a list of top-level module names (e.g. [encoder])")
    for item in value:
        if not isinstance(item, str) or not item.isidentifier():
            fail(name, list(value), f"{item!r} is not a top-level module name")
    return tuple(value)


@dataclass(frozen=True)
class ModelConfig:
    # deconvnet, deeplabv1, or a user factory package.module:factory (README "Your own model")
    name: str = "deconvnet"
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a user factory
    encoder_bn: bool = True
    fcn_bn: bool = True
    decoder_bn: bool = True  # deeplabv1: ignored (its decoder is the classifier alone)
    width: float = 0.125  # channel multiplier; 1.0 is the paper's VGG16
    fc_channels: int = 128  # paper: 4096 (DeconvNet), 1024 (DeepLab v1 LargeFOV)
    fc_kernel: int = 3  # fc6's kernel; paper: 7 (DeconvNet), 3 with dilation 12 (DeepLab v1)
    # after fc6/fc7: Dropout2d in DeconvNet (the course notebook used 0.5), elementwise Dropout in
    # DeepLab v1 (paper 0.5)
    dropout: float = 0.0
    pretrained: bool = False  # torchvision ImageNet weights for the encoder
    weights_path: str | None = None  # a local state dict for the encoder (or the whole model)

    @property
    def user(self) -> bool:
        """A user factory (an import path), not a built-in model."""
        return self.name not in MODELS

    def __post_init__(self) -> None:
        _check_import_path_or("model.name", self.name, MODELS, "package.module:factory")
        object.__setattr__(self, "args", _plain_mapping("model.args", self.args))
        if self.args and not self.user:
            fail("model.args", self.args, f"only for a user factory, not model.name={self.name}")
        if "num_classes" in self.args:
            fail("model.args", self.args, "num_classes is the dataset's, not an argument to set")
        if self.user and (self.pretrained or self.weights_path):
            fail("model.name", self.name, "pretrained and weights_path are for built-in models")
        check_positive("model.width", self.width)
        if round(64 * self.width) < 1:
            fail("model.width", self.width, "must give at least one channel (width >= 1/64)")
        if self.fc_channels < 1:
            fail("model.fc_channels", self.fc_channels, "must be >= 1")
        if self.fc_kernel < 1:
            fail("model.fc_kernel", self.fc_kernel, "must be >= 1")
        if self.name == "deeplabv1" and self.fc_kernel % 2 == 0:
            fail("model.fc_kernel", self.fc_kernel, "must be odd for deeplabv1 (paper: 3)")
        if not 0.0 <= self.dropout < 1.0:
            fail("model.dropout", self.dropout, "must be in [0, 1)")
        if self.pretrained and self.width != 1.0:
            fail("model.pretrained", self.pretrained, "ImageNet weights need model.width=1.0")
        if self.pretrained and self.weights_path:
            fail("model.weights_path", self.weights_path, "give either pretrained or weights_path")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    lr: float = 3e-3  # FCN, decoder and head
    f_lr: float = 3e-3  # encoder ("feature" lr); 0 freezes it on purpose
    weight_decay: float = 1e-6
    momentum: float = 0.9  # SGD only
    scheduler: str = "none"
    poly_power: float = 0.9
    builder: str | None = None  # a user optimiser builder package.module:function
    # top-level modules at f_lr (the built-in builder's groups; frozen on purpose when f_lr=0)
    f_lr_modules: tuple[str, ...] = ("encoder",)

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, OPTIMIZERS)
        if self.builder is not None and not is_import_path(self.builder):
            fail("optim.builder", self.builder, "must be an import path package.module:function")
        object.__setattr__(
            self, "f_lr_modules", _module_names("optim.f_lr_modules", self.f_lr_modules)
        )
        check_positive("optim.lr", self.lr)
        check_positive("optim.f_lr", self.f_lr, allow_zero=True)
        check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        if not 0.0 <= self.momentum < 1.0:
            fail("optim.momentum", self.momentum, "must be in [0, 1)")
        check_choice("optim.scheduler", self.scheduler, SCHEDULERS)
        check_positive("optim.poly_power", self.poly_power)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = True  # only on CUDA
    channels_last: bool = True  # only on CUDA
    # cuDNN: true = deterministic, no benchmark; false = benchmark mode (fastest conv algorithm
    # per shape, not bit-reproducible); None: auto = false on CUDA. The CPU is unaffected.
    deterministic: bool | None = None
    compile: bool = False  # torch.compile the model (its first steps compile: slow start)
    strict: bool = False  # abort when the param-group audit finds anything
    audit: bool = True  # param-group audit findings become flags (audit:*); off: table only
    inject_bug: str | None = None
    checkpoint: bool = True
    monitor: bool = True  # update monitor, learning check, mask pairing check
    monitor_steps: int = 5  # the monitor's early look: after this many optimiser steps
    stop_never_updated: bool = False  # end the trial (failed) when a module never moved

    def __post_init__(self) -> None:
        if self.epochs < 1:
            fail("train.epochs", self.epochs, "must be >= 1")
        if self.batch_size < 1:
            fail("train.batch_size", self.batch_size, "must be >= 1")
        if self.seed < 0:
            fail("train.seed", self.seed, "must be >= 0")
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            fail("train.device", self.device, "must be auto, cpu, cuda, cuda:N or mps")
        if self.inject_bug is not None:
            check_choice("train.inject_bug", self.inject_bug, INJECTABLE_BUGS)
        if self.monitor_steps < 1:
            fail("train.monitor_steps", self.monitor_steps, "must be >= 1")
        if self.strict and not self.audit:
            fail("train.strict", self.strict, "needs train.audit=true (it acts on its findings)")
        if self.stop_never_updated and not self.monitor:
            fail(
                "train.stop_never_updated",
                self.stop_never_updated,
                "needs train.monitor=true (the monitor raises never-updated)",
            )


@dataclass(frozen=True)
class TrackingConfig:
    backend: str = "wandb"  # wandb: record + W&B run; local: record + mask PNGs; none: record
    project: str = "harness"
    entity: str | None = None  # None: the W&B default entity of the logged-in user
    log_model: bool = False  # best.pt as a W&B artifact
    media_every: int = 5  # mask panel every N epochs, and at the end of the trial
    media_images: int = 8  # fixed val images in the panel; 0 turns it off

    def __post_init__(self) -> None:
        check_choice("tracking.backend", self.backend, TRACKING_BACKENDS)
        # W&B rejects these characters in project names (and only finds out online)
        if not self.project or len(self.project) > 128 or re.search(r"[/\\#?%:]", self.project):
            fail("tracking.project", self.project, "must be 1-128 characters without /\\#?%:")
        if self.entity is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.entity):
            fail("tracking.entity", self.entity, "must be letters, digits, '_' or '-'")
        if self.media_every < 1:
            fail("tracking.media_every", self.media_every, "must be >= 1")
        if self.media_images < 0:
            fail("tracking.media_images", self.media_images, "must be >= 0")


@dataclass(frozen=True)
class TrialConfig:
    name: str = "trial"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            fail("name", self.name, "must be letters, digits, '.', '_' or '-' (a folder name)")
        if self.train.inject_bug in OPTIMIZER_BUGS and self.optim.builder is not None:
            fail(
                "train.inject_bug",
                self.train.inject_bug,
                f"an injected optimiser bug replaces the built-in optimiser; it does not combine"
                f" with optim.builder={self.optim.builder}",
            )
        # DeconvNet's fc6 has no padding; DeepLab v1's is padded and fits any size (>= 32 here)
        side = encoder_output_size(self.data.image_size)
        if self.model.name == "deconvnet" and side < self.model.fc_kernel:
            fail(
                "data.image_size",
                self.data.image_size,
                f"five pools leave {side}x{side}, smaller than model.fc_kernel="
                f"{self.model.fc_kernel}; use an image size >= {32 * self.model.fc_kernel - 31}"
                " or a smaller fc_kernel",
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML/JSON values (tuples as lists): what config.yaml holds."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- building configs from YAML and overrides -------------------------------------------------

_T = TypeVar("_T")
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "tracking": TrackingConfig,
}


def _build_section(cls: type[_T], path: str, values: Mapping[str, Any], base: _T) -> _T:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path}{key}: unknown key (known: {', '.join(sorted(known))})")
        changes[key] = coerce(f"{path}{key}", value, hints[key])
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def config_from_dict(raw: Mapping[str, Any], base: TrialConfig | None = None) -> TrialConfig:
    """Apply a nested mapping (the YAML layout of ``TrialConfig.to_dict``) on top of ``base``."""
    base = base or TrialConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: must be a mapping of sections, got {type(raw).__name__}")
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: must be a mapping, got {type(value).__name__}")
            sections[key] = _build_section(SECTIONS[key], f"{key}.", value, getattr(base, key))
        elif key in ("name", "out_dir"):
            top[key] = coerce(key, value, str)
        else:
            known = ", ".join(["name", "out_dir", *SECTIONS])
            raise ConfigError(f"{key}: unknown key (known: {known})")
    return dataclasses.replace(base, **top, **sections)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """``yaml.safe_load`` of a file; unreadable files and bad YAML become one-line ConfigErrors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: a {what} must be UTF-8 text (byte {exc.start} is not)"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f": {problem}" if problem else ""
        raise ConfigError(
            f"{path}: not valid YAML ({exc.__class__.__name__}{where}{detail})"
        ) from None


def load_config(
    path: str | Path, base: TrialConfig | None = None, *, raw: Any = None
) -> TrialConfig:
    """The config file ``path``; ``raw``: its document when the caller has read it already."""
    path = Path(path)
    raw = read_yaml(path) if raw is None else raw
    try:
        return config_from_dict(raw or {}, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def with_overrides(cfg: TrialConfig, overrides: Mapping[str, Any]) -> TrialConfig:
    """Apply dotted overrides such as ``{"optim.lr": 1e-4}``; ``None`` values are skipped."""
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        head, _, tail = dotted.partition(".")
        if tail:
            nested.setdefault(head, {})[tail] = value
        else:
            nested[head] = value
    return config_from_dict(nested, cfg)


def save_config(cfg: TrialConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
