"""A sweep file: the study, its objective, sampler, pruner, heartbeat, search space and the fixed
trial settings, validated before anything runs. Every error names its key path
(``space.lr: low=0.01 > high=0.0001``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.options import FLAT_KEYS
from harness.config.trial import SECTIONS, TrialConfig, config_from_dict, read_yaml, with_overrides
from harness.config.validate import boolean, integer, key_error, mapping, number, only_keys
from harness.errors import ConfigError
from harness.secrets import mask_url

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
METRICS = ("val/mIoU",)
DIRECTIONS = ("maximize",)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a study name is a folder name
_TOP_KEYS = (
    "study",
    "n_trials",
    "timeout",
    "objective",
    "sampler",
    "pruner",
    "heartbeat",
    "storage",
    "space",
    "trial",
)


@dataclass(frozen=True)
class Param:
    """One search dimension: a float/int range (``low``, ``high``, ``log``) or ``choices``."""

    name: str  # as written in the sweep file (``lr`` or ``optim.lr``)
    path: str  # the dotted TrialConfig field
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"  # tpe | random | grid
    seed: int = 0
    n_startup_trials: int = 4  # TPE's random start


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "median"  # median | hyperband | none
    n_startup_trials: int = 3  # unflagged finished trials before the median rule judges
    n_warmup_epochs: int = 2  # epochs before any rule judges a trial
    majority_floor: bool = True  # prune a trial still at the majority-class level


@dataclass(frozen=True)
class HeartbeatSpec:
    interval: int = 10  # seconds between a running trial's heartbeats
    grace_period: int = 60  # a trial silent this long is failed (its worker died) ...
    max_retry: int = 1  # ... and re-queued with the same parameters this many times


@dataclass(frozen=True)
class SweepSpec:
    study: str
    n_trials: int
    base: TrialConfig  # the fixed trial settings
    space: tuple[Param, ...]
    timeout: float | None = None
    metric: str = "val/mIoU"
    direction: str = "maximize"
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    heartbeat: HeartbeatSpec = field(default_factory=HeartbeatSpec)
    storage: str | None = None
    source: str = ""  # the file it came from, for messages
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def out_root(self) -> Path:
        return Path(self.base.out_dir)

    @property
    def study_dir(self) -> Path:
        return self.out_root / self.study


def resolve_param_path(path: str, name: str) -> str:
    """``lr`` (a flat W&B key) or ``optim.lr`` -> the dotted TrialConfig field."""
    dotted = FLAT_KEYS.get(name, name)
    section, _, key = dotted.partition(".")
    if section in SECTIONS and key in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        return dotted
    known = ", ".join(FLAT_KEYS)
    raise key_error(path, f"unknown trial option (use one of {known} or section.field)")


def _parse_param(path: str, name: str, raw: Any, base: TrialConfig) -> Param:
    dotted = resolve_param_path(path, name)
    body = mapping(path, raw)
    only_keys(path, body, ("type", "low", "high", "log", "step", "choices"))
    if "choices" in body:
        choices = body["choices"]
        if not isinstance(choices, list) or not choices:
            raise key_error(f"{path}.choices", "must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise key_error(f"{path}.choices", f"{c!r} must be a scalar")
            _check_value(f"{path}.choices", dotted, c, base)
        extra = set(body) - {"choices", "type"}
        if extra:
            raise key_error(f"{path}.{sorted(extra)[0]}", "not allowed with choices")
        return Param(name, dotted, "categorical", choices=tuple(choices))
    for key in ("low", "high"):
        if key not in body:
            raise key_error(path, f"needs low and high, or choices (missing {key})")
    kind = body.get("type", "float")
    if kind not in ("float", "int"):
        raise key_error(f"{path}.type", f"{kind!r} must be float or int (or give choices)")
    low, high = number(f"{path}.low", body["low"]), number(f"{path}.high", body["high"])
    log = boolean(f"{path}.log", body.get("log", False))
    if low > high:
        raise key_error(path, f"low={low:g} > high={high:g}")
    if log and low <= 0:
        raise key_error(f"{path}.low", f"{low:g}: a log range needs low > 0")
    step = body.get("step")
    if step is not None:
        step = number(f"{path}.step", step)
        if step <= 0 or log:
            raise key_error(f"{path}.step", "must be > 0 and cannot be combined with log")
    if kind == "int":
        if not (low.is_integer() and high.is_integer()):
            raise key_error(path, "an int range needs integer low and high")
        low, high = int(low), int(high)
    for bound in (low, high):
        _check_value(path, dotted, bound, base)
    return Param(name, dotted, kind, low=low, high=high, log=log, step=step)


def _check_value(path: str, dotted: str, value: Any, base: TrialConfig) -> None:
    """A candidate value must make a valid trial config (type and rule of the field)."""
    if value is None:
        return
    try:
        with_overrides(base, {dotted: value})
    except ConfigError as exc:
        raise key_error(path, str(exc)) from None


def parse_spec(raw: Any, source: str = "sweep") -> SweepSpec:
    """Validate a sweep file's mapping; every error names its key path."""
    top = mapping("sweep file", raw)
    only_keys("", top, _TOP_KEYS)
    study = top.get("study")
    if not isinstance(study, str) or not NAME.fullmatch(study):
        raise key_error(
            "study", f"{study!r} must be letters, digits, '.', '_' or '-' (a folder name)"
        )
    if "n_trials" not in top:
        raise key_error("n_trials", "missing (the total number of trials the study should reach)")
    trial_raw = mapping("trial", top.get("trial"))
    try:
        base = config_from_dict(trial_raw, TrialConfig(name=study))
    except ConfigError as exc:
        raise key_error("trial", str(exc)) from None
    metric, direction = _objective(mapping("objective", top.get("objective")))
    sampler = _sampler(mapping("sampler", top.get("sampler")))
    storage = top.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise key_error("storage", f"{mask_url(str(storage))!r} must be a SQLAlchemy URL or empty")
    return SweepSpec(
        study=study,
        n_trials=integer("n_trials", top["n_trials"], 1),
        base=base,
        space=_space(mapping("space", top.get("space")), base, sampler.name),
        timeout=_timeout("timeout", top.get("timeout")),
        metric=metric,
        direction=direction,
        sampler=sampler,
        pruner=_pruner(mapping("pruner", top.get("pruner"))),
        heartbeat=_heartbeat(mapping("heartbeat", top.get("heartbeat"))),
        storage=storage,
        source=source,
        raw=dict(top),
    )


def _timeout(path: str, value: Any) -> float | None:
    if value is None:
        return None
    timeout = number(path, value)
    if timeout <= 0:
        raise key_error(path, f"{timeout:g} must be > 0 seconds")
    return timeout


def _objective(objective: Mapping[str, Any]) -> tuple[str, str]:
    only_keys("objective", objective, ("metric", "direction"))
    metric = objective.get("metric", "val/mIoU")
    if metric not in METRICS:
        raise key_error("objective.metric", f"{metric!r} must be one of {', '.join(METRICS)}")
    direction = objective.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise key_error("objective.direction", f"{direction!r} must be {', '.join(DIRECTIONS)}")
    return metric, direction


def _sampler(sampler: Mapping[str, Any]) -> SamplerSpec:
    only_keys("sampler", sampler, ("name", "seed", "n_startup_trials"))
    name = sampler.get("name", "tpe")
    if name not in SAMPLERS:
        raise key_error("sampler.name", f"{name!r}: unknown sampler ({', '.join(SAMPLERS)})")
    return SamplerSpec(
        name=name,
        seed=integer("sampler.seed", sampler.get("seed", 0), 0),
        n_startup_trials=integer("sampler.n_startup_trials", sampler.get("n_startup_trials", 4), 0),
    )


def _pruner(pruner: Mapping[str, Any]) -> PrunerSpec:
    only_keys("pruner", pruner, ("name", "n_startup_trials", "n_warmup_epochs", "majority_floor"))
    name = pruner.get("name", "median")
    if name not in PRUNERS:
        raise key_error("pruner.name", f"{name!r}: unknown pruner ({', '.join(PRUNERS)})")
    return PrunerSpec(
        name=name,
        n_startup_trials=integer("pruner.n_startup_trials", pruner.get("n_startup_trials", 3), 0),
        n_warmup_epochs=integer("pruner.n_warmup_epochs", pruner.get("n_warmup_epochs", 2), 0),
        majority_floor=boolean("pruner.majority_floor", pruner.get("majority_floor", True)),
    )


def _heartbeat(heartbeat: Mapping[str, Any]) -> HeartbeatSpec:
    only_keys("heartbeat", heartbeat, ("interval", "grace_period", "max_retry"))
    interval = integer("heartbeat.interval", heartbeat.get("interval", 10), 1)
    grace = integer("heartbeat.grace_period", heartbeat.get("grace_period", 60), 1)
    if grace <= interval:
        raise key_error(
            "heartbeat.grace_period", f"{grace} must be > heartbeat.interval={interval}"
        )
    max_retry = integer("heartbeat.max_retry", heartbeat.get("max_retry", 1), 0)
    return HeartbeatSpec(interval=interval, grace_period=grace, max_retry=max_retry)


def _space(space_raw: Mapping[str, Any], base: TrialConfig, sampler: str) -> tuple[Param, ...]:
    if not space_raw:
        raise key_error("space", "must name at least one trial option to search")
    space: list[Param] = []
    seen: dict[str, str] = {}
    for name, body in space_raw.items():
        param = _parse_param(f"space.{name}", str(name), body, base)
        if param.path in seen:
            raise key_error(f"space.{name}", f"same option as space.{seen[param.path]}")
        seen[param.path] = str(name)
        space.append(param)
    if sampler == "grid":
        for p in space:
            if p.kind != "categorical":
                raise key_error(f"space.{p.name}", "the grid sampler needs choices, not a range")
    return tuple(space)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    raw = read_yaml(path, "sweep file")
    try:
        return parse_spec(raw, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def with_options(
    spec: SweepSpec,
    *,
    n_trials: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    timeout: float | None = None,
    out: str | None = None,
    sampler_seed: int | None = None,
    trial_overrides: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """CLI options over the sweep file (they win). A new sampler seed is written into the
    recorded sweep file too (``raw``, the study's ``sweep`` attribute), so that the study says
    which seed drew its trials."""
    changes: dict[str, Any] = {}
    if sampler_seed is not None:
        seed = integer("--sampler-seed", sampler_seed, 0)
        changes["sampler"] = dataclasses.replace(spec.sampler, seed=seed)
        raw_sampler = spec.raw.get("sampler")
        sampler_raw = dict(raw_sampler) if isinstance(raw_sampler, Mapping) else {}
        changes["raw"] = {**spec.raw, "sampler": {**sampler_raw, "seed": seed}}
    if n_trials is not None:
        changes["n_trials"] = integer("--n-trials", n_trials, 1)
    if study is not None:
        if not NAME.fullmatch(study):
            raise key_error("--study", f"{study!r} must be letters, digits, '.', '_' or '-'")
        changes["study"] = study
    if storage is not None:
        changes["storage"] = storage
    if timeout is not None:
        changes["timeout"] = _timeout("--timeout", timeout)
    base = spec.base
    if out is not None:
        base = dataclasses.replace(base, out_dir=out)
    if trial_overrides:
        base = with_overrides(base, trial_overrides)
    return dataclasses.replace(spec, base=base, **changes)
