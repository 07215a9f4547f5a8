"""Optuna sweeps: a validated sweep file, a study that resumes to a total, workers, best config.

A sweep file (``sweeps/*.yaml``) holds the study name, ``n_trials`` (the total the study should
reach), the objective, sampler, pruner, heartbeat, the search space and the fixed trial settings
(the sections of a run's ``config.yaml``). Each trial is a ``train.fit`` whose run folder is
``runs/<study>/trials/<study>-<number>``; a callback reports val mIoU per epoch for pruning.

Storage: by default a SQLite file ``runs/<study>/study.db`` (several local processes share it);
any SQLAlchemy URL (``postgresql://...``) lets workers on several machines join one study. RDB
heartbeats fail a trial whose worker died (SIGKILL) and re-queue it with the same parameters.
After every trial ``runs/<study>/best.yaml`` is rewritten atomically: the best finished trial no
check flagged, loadable with ``harness trial --config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import re
import signal
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.config import _SECTIONS, TrialConfig, config_from_dict, read_yaml, with_overrides
from harness.errors import ConfigError, HarnessError
from harness.record import atomic_write_bytes

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
METRICS = ("val/mIoU",)
DIRECTIONS = ("maximize",)
STUDY_DB = "study.db"
BEST_FILE = "best.yaml"
POLL_S = 1.0  # how often an idle worker looks for stale trials or a free slot

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
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


# --- the sweep file ---------------------------------------------------------------------------


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
class SweepSpec:
    study: str
    n_trials: int
    base: TrialConfig  # the fixed trial settings
    space: tuple[Param, ...]
    timeout: float | None = None
    metric: str = "val/mIoU"
    direction: str = "maximize"
    sampler: str = "tpe"
    seed: int = 0
    n_startup_trials: int = 4
    pruner: str = "median"
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 2
    pruner_majority_floor: bool = True
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 1
    storage: str | None = None
    source: str = ""  # the file it came from, for messages
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def out_root(self) -> Path:
        return Path(self.base.out_dir)

    @property
    def study_dir(self) -> Path:
        return self.out_root / self.study


def _err(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _mapping(path: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _err(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _only(path: str, value: Mapping[str, Any], known: Sequence[str]) -> None:
    for key in value:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise _err(where, f"unknown key (known: {', '.join(known)})")


def _int(path: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _err(path, f"{value!r} must be an integer >= {low}")
    return value


def _number(path: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _err(path, f"{value!r} must be a number")
    try:
        out = float(value)  # YAML reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise _err(path, f"{value!r} must be a number") from None
    if not math.isfinite(out):
        raise _err(path, f"{value!r} must be finite")
    return out


def resolve_param_path(path: str, name: str) -> str:
    """``lr`` (a flat W&B key) or ``optim.lr`` -> the dotted TrialConfig field."""
    from harness.tracking import FLAT_KEYS

    dotted = FLAT_KEYS.get(name, name)
    section, _, key = dotted.partition(".")
    if section in _SECTIONS and key in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
        return dotted
    raise _err(path, f"unknown trial option (use one of {', '.join(FLAT_KEYS)} or section.field)")


def _parse_param(path: str, name: str, raw: Any, base: TrialConfig) -> Param:
    dotted = resolve_param_path(path, name)
    body = _mapping(path, raw)
    _only(path, body, ("type", "low", "high", "log", "step", "choices"))
    if "choices" in body:
        choices = body["choices"]
        if not isinstance(choices, list) or not choices:
            raise _err(f"{path}.choices", "must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise _err(f"{path}.choices", f"{c!r} must be a scalar")
            _check_value(f"{path}.choices", dotted, c, base)
        extra = set(body) - {"choices", "type"}
        if extra:
            raise _err(f"{path}.{sorted(extra)[0]}", "not allowed with choices")
        return Param(name, dotted, "categorical", choices=tuple(choices))
    for key in ("low", "high"):
        if key not in body:
            raise _err(path, f"needs low and high, or choices (missing {key})")
    kind = body.get("type", "float")
    if kind not in ("float", "int"):
        raise _err(f"{path}.type", f"{kind!r} must be float or int (or give choices)")
    low, high = _number(f"{path}.low", body["low"]), _number(f"{path}.high", body["high"])
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise _err(f"{path}.log", f"{log!r} must be true or false")
    if low > high:
        raise _err(path, f"low={low:g} > high={high:g}")
    if log and low <= 0:
        raise _err(f"{path}.low", f"{low:g}: a log range needs low > 0")
    step = body.get("step")
    if step is not None:
        step = _number(f"{path}.step", step)
        if step <= 0 or log:
            raise _err(f"{path}.step", "must be > 0 and cannot be combined with log")
    if kind == "int":
        if not (low.is_integer() and high.is_integer()):
            raise _err(path, "an int range needs integer low and high")
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
        raise _err(path, str(exc)) from None


def parse_spec(raw: Any, source: str = "sweep") -> SweepSpec:
    """Validate a sweep file's mapping; every error names its key path."""
    top = _mapping("sweep file", raw)
    _only("", top, _TOP_KEYS)
    study = top.get("study")
    if not isinstance(study, str) or not _NAME.fullmatch(study):
        raise _err("study", f"{study!r} must be letters, digits, '.', '_' or '-' (a folder name)")
    if "n_trials" not in top:
        raise _err("n_trials", "missing (the total number of trials the study should reach)")
    n_trials = _int("n_trials", top["n_trials"], 1)
    timeout = top.get("timeout")
    if timeout is not None:
        timeout = _number("timeout", timeout)
        if timeout <= 0:
            raise _err("timeout", f"{timeout:g} must be > 0 seconds")

    trial_raw = _mapping("trial", top.get("trial"))
    try:
        base = config_from_dict(trial_raw, TrialConfig(name=study))
    except ConfigError as exc:
        raise _err("trial", str(exc)) from None

    objective = _mapping("objective", top.get("objective"))
    _only("objective", objective, ("metric", "direction"))
    metric = objective.get("metric", "val/mIoU")
    if metric not in METRICS:
        raise _err("objective.metric", f"{metric!r} must be one of {', '.join(METRICS)}")
    direction = objective.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise _err("objective.direction", f"{direction!r} must be {', '.join(DIRECTIONS)}")

    sampler = _mapping("sampler", top.get("sampler"))
    _only("sampler", sampler, ("name", "seed", "n_startup_trials"))
    sampler_name = sampler.get("name", "tpe")
    if sampler_name not in SAMPLERS:
        raise _err("sampler.name", f"{sampler_name!r}: unknown sampler ({', '.join(SAMPLERS)})")
    seed = _int("sampler.seed", sampler.get("seed", 0), 0)
    n_startup = _int("sampler.n_startup_trials", sampler.get("n_startup_trials", 4), 0)

    pruner = _mapping("pruner", top.get("pruner"))
    _only("pruner", pruner, ("name", "n_startup_trials", "n_warmup_epochs", "majority_floor"))
    pruner_name = pruner.get("name", "median")
    if pruner_name not in PRUNERS:
        raise _err("pruner.name", f"{pruner_name!r}: unknown pruner ({', '.join(PRUNERS)})")
    p_startup = _int("pruner.n_startup_trials", pruner.get("n_startup_trials", 3), 0)
    p_warmup = _int("pruner.n_warmup_epochs", pruner.get("n_warmup_epochs", 2), 0)
    p_floor = pruner.get("majority_floor", True)
    if not isinstance(p_floor, bool):
        raise _err("pruner.majority_floor", f"{p_floor!r} must be true or false")

    heartbeat = _mapping("heartbeat", top.get("heartbeat"))
    _only("heartbeat", heartbeat, ("interval", "grace_period", "max_retry"))
    interval = _int("heartbeat.interval", heartbeat.get("interval", 10), 1)
    grace = _int("heartbeat.grace_period", heartbeat.get("grace_period", 60), 1)
    if grace <= interval:
        raise _err("heartbeat.grace_period", f"{grace} must be > heartbeat.interval={interval}")
    max_retry = _int("heartbeat.max_retry", heartbeat.get("max_retry", 1), 0)

    storage = top.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise _err("storage", f"{mask_url(str(storage))!r} must be a SQLAlchemy URL or empty")

    space_raw = _mapping("space", top.get("space"))
    if not space_raw:
        raise _err("space", "must name at least one trial option to search")
    space: list[Param] = []
    seen: dict[str, str] = {}
    for name, body in space_raw.items():
        param = _parse_param(f"space.{name}", str(name), body, base)
        if param.path in seen:
            raise _err(f"space.{name}", f"same option as space.{seen[param.path]}")
        seen[param.path] = str(name)
        space.append(param)
    if sampler_name == "grid":
        for p in space:
            if p.kind != "categorical":
                raise _err(f"space.{p.name}", "the grid sampler needs choices, not a range")
    return SweepSpec(
        study=study,
        n_trials=n_trials,
        base=base,
        space=tuple(space),
        timeout=timeout,
        metric=metric,
        direction=direction,
        sampler=sampler_name,
        seed=seed,
        n_startup_trials=n_startup,
        pruner=pruner_name,
        pruner_startup_trials=p_startup,
        pruner_warmup_epochs=p_warmup,
        pruner_majority_floor=p_floor,
        heartbeat_interval=interval,
        grace_period=grace,
        max_retry=max_retry,
        storage=storage,
        source=source,
        raw=dict(top),
    )


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
    trial_overrides: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """CLI options over the sweep file (they win)."""
    changes: dict[str, Any] = {}
    if n_trials is not None:
        changes["n_trials"] = _int("--n-trials", n_trials, 1)
    if study is not None:
        if not _NAME.fullmatch(study):
            raise _err("--study", f"{study!r} must be letters, digits, '.', '_' or '-'")
        changes["study"] = study
    if storage is not None:
        changes["storage"] = storage
    if timeout is not None:
        if timeout <= 0:
            raise _err("--timeout", f"{timeout:g} must be > 0 seconds")
        changes["timeout"] = timeout
    base = spec.base
    if out is not None:
        base = dataclasses.replace(base, out_dir=out)
    if trial_overrides:
        base = with_overrides(base, trial_overrides)
    return dataclasses.replace(spec, base=base, **changes)


# --- storage ----------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for anything printed or logged)."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def storage_url(spec: SweepSpec) -> str:
    if spec.storage:
        return spec.storage
    return f"sqlite:///{(spec.study_dir / STUDY_DB).resolve()}"


def _driver_url(url: str) -> str:
    """SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3; we ship psycopg2-binary."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and sep:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return f"postgresql+psycopg2://{rest}"
    return url


def open_storage(url: str, spec: SweepSpec | None = None, *, heartbeat: bool = True) -> Any:
    """An RDBStorage with heartbeats: a trial whose worker died is failed and re-queued."""
    import optuna
    import sqlalchemy.exc

    url = _driver_url(url)
    # heartbeats are "experimental" in optuna since 2.8; the warning is noise for our users
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes share one file: wait for the lock rather than fail at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat and spec is not None:
        kwargs.update(
            heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=spec.max_retry
            ),
        )
    last: Exception | None = None
    for attempt in range(5):  # two processes creating the tables of a fresh database can race
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            last = exc
            if "could not connect" in str(exc) or "Connection refused" in str(exc):
                break
            time.sleep(0.2 * (attempt + 1))
        except (ImportError, ValueError, sqlalchemy.exc.ArgumentError) as exc:
            raise HarnessError(f"--storage {mask_url(url)}: {type(exc).__name__}: {exc}") from None
    detail = str(last).splitlines()[0] if last else "unknown error"
    raise HarnessError(f"--storage {mask_url(url)}: cannot open ({mask_url(detail)})")


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> Any:
    import optuna

    # a resumed or parallel worker must not replay the first worker's random draws
    seed = zlib.crc32(f"{spec.seed}:{seed_offset}".encode()) if seed_offset else spec.seed
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        grid = {p.name: list(p.choices) for p in spec.space}
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials)


def make_pruner(spec: SweepSpec) -> Any:
    import optuna

    if spec.pruner == "median":
        from harness.pruning import CheckedMedianPruner

        # Optuna's median rule, but trials a check flagged (e.g. no-learning) do not set the bar
        return CheckedMedianPruner(
            n_startup_trials=spec.pruner_startup_trials,
            n_warmup_steps=spec.pruner_warmup_epochs,
            majority_floor=spec.pruner_majority_floor,
        )
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=spec.base.train.epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def create_study(spec: SweepSpec, url: str) -> Any:
    """Create the study once (before any worker starts); a racing creator just loads it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, spec)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study,
            direction="maximize" if spec.direction == "maximize" else "minimize",
            load_if_exists=True,
        )
    except Exception as exc:  # DuplicatedStudyError / IntegrityError from a concurrent creator
        if "exist" not in str(exc).lower() and "unique" not in str(exc).lower():
            raise
        study = optuna.load_study(study_name=spec.study, storage=storage)
    if "sweep" not in study.user_attrs:
        study.set_user_attr("sweep", _jsonable_spec(spec))
    return study


def _jsonable_spec(spec: SweepSpec) -> dict[str, Any]:
    raw = dict(spec.raw)
    raw.pop("storage", None)  # may hold a password
    return {"source": spec.source, **yaml.safe_load(yaml.safe_dump(raw))}


# --- one trial --------------------------------------------------------------------------------


class TrialFailed(Exception):
    """A trial ended as failed (NaN loss, an error); optuna records it as FAIL and goes on."""


def trial_config(spec: SweepSpec, trial: Any) -> TrialConfig:
    values: dict[str, Any] = {}
    for p in spec.space:
        if p.kind == "categorical":
            values[p.path] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            step = int(p.step) if p.step else 1
            values[p.path] = trial.suggest_int(
                p.name, int(p.low or 0), int(p.high or 0), step=step, log=p.log
            )
        else:
            values[p.path] = trial.suggest_float(
                p.name, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log
            )
    cfg = dataclasses.replace(
        spec.base, name=f"{spec.study}-{trial.number}", out_dir=str(spec.study_dir / "trials")
    )
    # None values would be skipped by with_overrides: set them on the section directly
    nones = {k: v for k, v in values.items() if v is None}
    cfg = with_overrides(cfg, {k: v for k, v in values.items() if v is not None})
    for dotted in nones:
        section, key = dotted.split(".")
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: None})}
        )
    return cfg


def _pruning_callback(trial: Any, metric: str, pruner: str) -> Any:
    from harness.pruning import MAJORITY_ATTR
    from harness.train import Callback, StopTrial

    class OptunaPruning(Callback):
        """Reports the metric per epoch; the study's pruner may end the trial."""

        majority_known = False

        def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
            value = row.get(metric)
            if value is None or math.isnan(value):
                return
            majority = row.get("val/majority_mIoU")
            if metric == "val/mIoU" and not self.majority_known and isinstance(majority, float):
                trial.set_user_attr(MAJORITY_ATTR, majority)  # the median pruner's floor
                self.majority_known = True
            trial.report(float(value), epoch)
            if trial.should_prune():
                why = getattr(trial.study.pruner, "reasons", {}).get(trial.number)
                # the harness's median pruner says which rule stopped the trial
                raise StopTrial(why or f"{pruner} pruner ({metric} {value:.4f})", "pruned")

    return OptunaPruning()


HIDDEN_PARAMS = ("inject_bug", "train.inject_bug")


def _judged_params(params: Mapping[str, Any]) -> dict[str, Any]:
    # an injected bug is what the detector must find, not a hyperparameter it may explain it by
    return {k: v for k, v in params.items() if k not in HIDDEN_PARAMS}


TRAIN_LOSS_ATTR = "train_loss"  # the trial's train/loss per epoch, for the study-level detector


def _outcome(t: Any) -> Any:
    """A finished Optuna trial as the study-level detector sees it: its judged parameters and
    value, and, when the trial recorded them, its majority-class level and training-loss curve."""
    from harness.outliers import outcome_of
    from harness.pruning import MAJORITY_ATTR

    rows = [{"train/loss": x} for x in t.user_attrs.get(TRAIN_LOSS_ATTR) or []]
    majority = t.user_attrs.get(MAJORITY_ATTR)
    return outcome_of(
        t.number, _judged_params(t.params), float(t.value), rows, majority_miou=majority
    )


def _outlier_callback(trial: Any) -> Any:
    """The study-level verdict on this trial as it finishes, from the trials finished so far,
    so the flag reaches the trial's own attributes, W&B tags and summary (``fit`` records
    callback flags). The study's current verdict (``study_outliers``) may change later."""
    from harness.outliers import OUTLIER_LOW, find_outliers, outcome_of
    from harness.train import Callback

    class StudyOutlierCheck(Callback):
        def __init__(self) -> None:
            self.best = -math.inf
            self.status = ""
            self.rows: list[dict[str, Any]] = []  # train/loss and val/majority_mIoU per epoch

        def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
            value = row.get("val/mIoU")
            if value is not None and not math.isnan(value):
                self.best = max(self.best, float(value))
            keep = ("train/loss", "val/majority_mIoU")
            self.rows.append({k: row[k] for k in keep if k in row})

        def on_fit_end(self, status: str) -> None:
            self.status = status

        def flags(self) -> dict[str, str]:
            if self.status != "finished" or not math.isfinite(self.best):
                return {}  # a pruned or failed trial's mIoU says nothing about its parameters
            import optuna

            done = [
                _outcome(t)
                for t in trial.study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
                )
                if t.value is not None and t.number != trial.number
            ]
            done.append(
                outcome_of(trial.number, _judged_params(trial.params), self.best, self.rows)
            )
            verdict = find_outliers(done).get(trial.number)
            return {OUTLIER_LOW: verdict.evidence} if verdict is not None else {}

    return StudyOutlierCheck()


def _wandb_path(info: Mapping[str, Any]) -> str:
    if info.get("url"):
        return str(info["url"])
    if info.get("run_id"):
        return f"{info['run_id']} ({info.get('mode')})"
    return str(info.get("mode") or info.get("backend") or "")


class Objective:
    """``fit`` per trial; data is loaded once per worker (per distinct data config)."""

    def __init__(self, spec: SweepSpec, console: Any = None) -> None:
        self.spec = spec
        self.console = console
        self._data: dict[Any, Any] = {}

    def data_for(self, cfg: TrialConfig) -> Any:
        from harness.train import load_data

        key = (cfg.data, cfg.train.seed)
        if key not in self._data:
            self._data[key] = load_data(cfg)
        return self._data[key]

    def __call__(self, trial: Any) -> float:
        import optuna

        from harness.tracking import make_tracker
        from harness.train import fit

        cfg = trial_config(self.spec, trial)
        # a retried trial inherits the stale one's attributes: overwrite them all
        fresh: dict[str, Any] = {
            "config": cfg.to_dict(),
            "run_dir": str(cfg.run_dir),
            "status": "running",
            "reason": None,
            "flags": [],
            "epochs_run": 0,
            "wandb": "",
        }
        for key, value in fresh.items():
            trial.set_user_attr(key, value)
        if self.console is not None:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
            self.console.print(f"[bold]trial {trial.number}[/]: {params}", soft_wrap=True)
        tracker = make_tracker(
            cfg,
            self.console,
            group=self.spec.study,
            tags=[f"study:{self.spec.study}"],
            extra_config={"study": self.spec.study, "trial_number": trial.number},
        )
        try:
            result = fit(
                cfg,
                console=self.console,
                callbacks=[
                    _pruning_callback(trial, self.spec.metric, self.spec.pruner),
                    _outlier_callback(trial),
                ],
                data=self.data_for(cfg),
                tracker=tracker,
            )
        except KeyboardInterrupt:
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("reason", "interrupted (SIGINT)")
            raise
        except Exception as exc:
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:500])
            raise
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("reason", result.reason)
        trial.set_user_attr("flags", list(result.flags))
        trial.set_user_attr("evidence", dict(result.evidence))
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("best_miou", _finite(result.best_miou))
        losses = [row.get("train/loss") for row in result.history]
        trial.set_user_attr(TRAIN_LOSS_ATTR, [float(x) for x in losses if x is not None])
        trial.set_user_attr("wandb", _wandb_path(result.summary.get("tracking") or {}))
        if result.status == "pruned":
            raise optuna.TrialPruned(result.reason or "pruned")
        if result.status != "finished" or math.isnan(result.best_miou):
            raise TrialFailed(result.reason or result.status)
        return float(result.best_miou)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# --- the study: counts, best config, table ----------------------------------------------------


def trials_of(study: Any) -> list[Any]:
    return list(study.get_trials(deepcopy=False))


def counts(trials: Sequence[Any]) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def done_count(trials: Sequence[Any]) -> int:
    """What counts towards ``n_trials``: finished and pruned trials (failed ones are redone)."""
    c = counts(trials)
    return c["COMPLETE"] + c["PRUNED"]


def study_outliers(trials: Sequence[Any]) -> dict[int, str]:
    """``outlier:low-miou`` evidence by trial number, from the study's finished trials as they
    are now (a pure function of them: recomputed, never stale, as the study grows)."""
    from harness.outliers import find_outliers

    done = [_outcome(t) for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return {key: o.evidence for key, o in find_outliers(done).items()}


def trial_flags(trial: Any, outliers: Mapping[int, str]) -> list[str]:
    """The trial's own flags (audit, monitor, learning check) plus the study-level one as the
    study stands now: the ``outlier:low-miou`` a trial recorded when it finished is replaced by
    the current verdict (``outliers``), since the flag is recomputed as the study grows."""
    from harness.outliers import OUTLIER_LOW

    flags = [f for f in trial.user_attrs.get("flags") or [] if f != OUTLIER_LOW]
    if trial.number in outliers:
        flags.append(OUTLIER_LOW)
    return flags


def trial_evidence(trial: Any, outliers: Mapping[int, str]) -> dict[str, str]:
    """Flag -> evidence in plain words, for every flag ``trial_flags`` returns."""
    from harness.outliers import OUTLIER_LOW

    recorded = dict(trial.user_attrs.get("evidence") or {})
    out: dict[str, str] = {}
    for flag in trial_flags(trial, outliers):
        if flag == OUTLIER_LOW:
            out[flag] = outliers[trial.number]
        else:
            out[flag] = str(recorded.get(flag, ""))
    return out


def best_trial(trials: Sequence[Any]) -> Any | None:
    """The best finished trial that no check flagged (study-level outliers included)."""
    outliers = study_outliers(trials)
    ok = [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.value is not None
        and not trial_flags(t, outliers)
        and t.user_attrs.get("config")
    ]
    return max(ok, key=lambda t: (t.value, -t.number), default=None)


def record_outliers(study: Any, trials: Sequence[Any]) -> None:
    """The study-level flags as a study user attribute (a finished trial's own attributes can no
    longer be changed in Optuna): ``{"<number>": "mIoU 0.03, neighbours predict ..."}``."""
    outliers = study_outliers(trials)
    study.set_user_attr("outliers", {str(n): ev for n, ev in sorted(outliers.items())})


def write_best(spec: SweepSpec, trials: Sequence[Any]) -> Path | None:
    """runs/<study>/best.yaml, atomically: the config plus trial number and mIoU as comments
    (comments, so that ``harness trial --config`` reads the file as a plain trial config)."""
    best = best_trial(trials)
    if best is None:
        return None
    cfg = config_from_dict(best.user_attrs["config"])
    cfg = dataclasses.replace(cfg, name=f"{spec.study}-best", out_dir=spec.base.out_dir)
    path = spec.study_dir / BEST_FILE
    header = (
        f"# best of study {spec.study}: trial {best.number}, {spec.metric} {best.value:.6f}\n"
        f"# trial: {best.number}\n# val_mIoU: {best.value!r}\n"
        f"# run folder: {best.user_attrs.get('run_dir')}\n"
        f"# reproduce: harness trial --config {path}\n"
    )
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_bytes(path, (header + body).encode())
    return path


def read_best(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """best.yaml -> (config mapping, header fields)."""
    text = path.read_text()
    header: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"# (trial|val_mIoU|run folder|reproduce): (.*)", line)
        if m:
            header[m.group(1)] = m.group(2)
    return yaml.safe_load(text) or {}, header


def trial_rows(trials: Sequence[Any], param_names: Sequence[str]) -> list[list[Any]]:
    outliers = study_outliers(trials)
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        ua = t.user_attrs
        value = t.value if t.state.name == "COMPLETE" else ua.get("best_miou")
        note = ua.get("reason") or t.system_attrs.get("fail_reason") or ""
        retry = t.system_attrs.get("failed_trial")
        if retry is not None:
            note = f"retry of {retry}" + (f"; {note}" if note else "")
        rows.append(
            [
                t.number,
                t.state.name.lower(),
                *[_fmt(t.params.get(n, "")) for n in param_names],
                "" if value is None else f"{value:.4f}",
                ua.get("epochs_run", ""),
                ",".join(trial_flags(t, outliers)),
                ua.get("wandb", ""),
                str(note)[:80],
            ]
        )
    return rows


def trial_table(trials: Sequence[Any], title: str = "trials") -> Any:
    from rich.table import Table

    names: list[str] = []
    for t in trials:
        for n in t.params:
            if n not in names:
                names.append(n)
    table = Table(title=title)
    for col in ["#", "state", *names, "val/mIoU", "epochs", "flags", "W&B run", "note"]:
        table.add_column(col, overflow="fold")
    for row in trial_rows(trials, names):
        table.add_row(*[str(c) for c in row])
    return table


def evidence_lines(trials: Sequence[Any]) -> list[str]:
    """One line per flag of every trial, with its evidence: what the table's flags column means."""
    outliers = study_outliers(trials)
    return [
        f"trial {t.number}: {flag}: {text}" if text else f"trial {t.number}: {flag}"
        for t in sorted(trials, key=lambda t: t.number)
        for flag, text in trial_evidence(t, outliers).items()
    ]


def progress_line(spec: SweepSpec, trials: Sequence[Any], trial: Any) -> str:
    best = best_trial(trials)
    ua = trial.user_attrs
    state = trial.state.name.lower()
    value = trial.value if state == "complete" else ua.get("best_miou")
    what = f"trial {trial.number} {state}"
    if value is not None:
        what += f" {spec.metric} {value:.4f}"
    if ua.get("epochs_run"):
        what += f" after {ua['epochs_run']} epochs"
    if state != "complete" and (ua.get("reason") or trial.system_attrs.get("fail_reason")):
        what += f" ({ua.get('reason') or trial.system_attrs.get('fail_reason')})"
    best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no best yet"
    return f"{what} | {best_text} | {done_count(trials)}/{spec.n_trials} done"


# --- workers ----------------------------------------------------------------------------------


def run_worker(
    spec: SweepSpec,
    url: str,
    *,
    worker: int = 0,
    console: Any = None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (or the timeout passes)."""
    import optuna

    # our own progress line says how each trial ended; optuna would add a traceback per failure
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, spec)
    trials0 = optuna.load_study(study_name=spec.study, storage=storage).get_trials(deepcopy=False)
    # the seed differs per worker and per resume: no replay of earlier random draws
    offset = worker * 100_003 + len(trials0)
    study = optuna.load_study(
        study_name=spec.study,
        storage=storage,
        sampler=make_sampler(spec, offset),
        pruner=make_pruner(spec),
    )
    objective = Objective(spec, console)
    deadline = time.monotonic() + spec.timeout if spec.timeout else math.inf

    def after_trial(study: Any, trial: Any) -> None:
        trials = trials_of(study)
        record_outliers(study, trials)
        write_best(spec, trials)
        if say is not None:
            say(progress_line(spec, trials, trial))

    while time.monotonic() < deadline:
        trials = trials_of(study)
        c = counts(trials)
        done = c["COMPLETE"] + c["PRUNED"]
        if done >= spec.n_trials:
            break
        if c["FAIL"] > 2 * spec.n_trials + 2:  # a sweep where every trial fails must end
            raise HarnessError(
                f"study {spec.study}: {c['FAIL']} failed trials; stopping (see the trial table)"
            )
        if done + c["RUNNING"] >= spec.n_trials:
            # the last slots are taken; a dead worker's trial goes stale and is re-queued
            optuna.storages.fail_stale_trials(study)
            time.sleep(POLL_S)
            continue
        remaining = deadline - time.monotonic()
        study.optimize(
            objective,
            n_trials=1,
            timeout=None if math.isinf(remaining) else remaining,
            catch=(Exception,),
            callbacks=[after_trial],
        )


def _worker_main(spec: SweepSpec, url: str, worker: int, threads: int) -> None:
    """Entry point of a ``--workers`` process (spawned: a clean interpreter per worker)."""
    import sys

    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        with _terminate_as_interrupt():
            run_worker(spec, url, worker=worker)
    except KeyboardInterrupt:
        sys.exit(130)
    except HarnessError as exc:
        print(f"worker {worker}: error: {exc}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a stopping container) ends a trial like Ctrl-C: marked failed, W&B
    run closed, instead of a trial left running until its heartbeat goes stale."""
    import threading

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(spec: SweepSpec, *, workers: int = 1, console: Any = None) -> Any:
    """Create the study once, run ``workers`` workers, write best.yaml; returns the study."""
    with _terminate_as_interrupt():
        return _run_sweep(spec, workers, console)


def _run_sweep(spec: SweepSpec, workers: int, console: Any) -> Any:
    url = storage_url(spec)
    say = (lambda m: console.print(m, markup=False, soft_wrap=True)) if console else None
    if say is not None:
        say(
            f"study {spec.study}: storage {mask_url(url)}, {spec.sampler} sampler, "
            f"{spec.pruner} pruner, target {spec.n_trials} trials, {workers} worker(s)"
        )
    study = create_study(spec, url)
    _check_data(spec, console)
    if workers <= 1:
        run_worker(spec, url, console=console, say=say)
    else:
        _run_processes(spec, url, workers, say)
    trials = trials_of(study)
    record_outliers(study, trials)
    write_best(spec, trials)
    log_study_run(spec, trials, say)
    return study


TABLE_COLUMNS = (
    "number",
    "state",
    "params",
    "val_mIoU",
    "epochs_run",
    "flags",
    "evidence",
    "wandb_run",
)
_RUN_URL = re.compile(r"https?://[^/]+/([^/]+)/([^/]+)/runs/([^/?#\s]+)")


def retag_online_runs(trials: Sequence[Any], outliers: Mapping[int, str], api: Any) -> int:
    """Bring the W&B tags of online trial runs up to date with the study-level verdict, which
    can change after a run finished (the flag is recomputed as the study grows). Offline runs
    keep the tags they finished with; the study run's table is always current. Returns the
    number of runs changed."""
    from harness.outliers import OUTLIER_LOW

    changed = 0
    for t in trials:
        m = _RUN_URL.match(str(t.user_attrs.get("wandb") or ""))
        if t.state.name != "COMPLETE" or m is None:
            continue
        run = api.run("/".join(m.groups()))
        tags = [tag for tag in run.tags if tag != OUTLIER_LOW]
        if t.number in outliers:
            tags.append(OUTLIER_LOW)
        if tags != list(run.tags):
            run.tags = tags
            run.update()
            changed += 1
    return changed


def log_study_run(
    spec: SweepSpec, trials: Sequence[Any], say: Callable[[str], None] | None = None
) -> None:
    """One W&B run per study (``job_type`` "study", group = study): trial table + best config.
    Like every tracker call, W&B trouble is reported once and never fails the sweep."""
    from harness.tracking import _redact, _wandb_env, resolve_mode

    if spec.base.tracking.backend != "wandb":
        return
    mode, _ = resolve_mode(os.environ)
    if mode == "disabled":
        return
    best = best_trial(trials)
    outliers = study_outliers(trials)
    rows = [
        [
            t.number,
            t.state.name.lower(),
            json.dumps(t.params, sort_keys=True),
            t.value if t.state.name == "COMPLETE" else t.user_attrs.get("best_miou"),
            t.user_attrs.get("epochs_run"),
            ",".join(trial_flags(t, outliers)),
            "; ".join(f"{k}: {v}" for k, v in trial_evidence(t, outliers).items()),
            t.user_attrs.get("wandb", ""),
        ]
        for t in sorted(trials, key=lambda t: t.number)
    ]
    root = spec.study_dir / "wandb"
    root.mkdir(parents=True, exist_ok=True)
    try:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        with _wandb_env(root):
            run = wandb.init(
                project=spec.base.tracking.project,
                entity=spec.base.tracking.entity,
                group=spec.study,
                job_type="study",
                name=f"{spec.study}-study",
                config={
                    "sweep": _jsonable_spec(spec),
                    "best_config": best.user_attrs.get("config") if best else None,
                    "best_trial": best.number if best else None,
                },
                mode=mode,  # type: ignore[arg-type]
                dir=str(spec.study_dir),
                reinit="create_new",
                settings=wandb.Settings(silent=True, quiet=True, console="off"),
            )
            run.log({"trials": wandb.Table(columns=list(TABLE_COLUMNS), data=rows)})
            run.summary["best/val_mIoU"] = best.value if best else None
            run.summary["best/trial"] = best.number if best else None
            run.summary["outliers"] = {str(n): ev for n, ev in sorted(outliers.items())}
            run.finish()
            if mode == "online":
                retag_online_runs(trials, outliers, wandb.Api())
    except Exception as exc:
        if say is not None:
            say(f"W&B study run not logged ({_redact(f'{type(exc).__name__}: {exc}')})")


def _check_data(spec: SweepSpec, console: Any) -> None:
    """Load the data once up front: a bad dataset is one error, not n failed trials."""
    from harness.train import load_data

    load_data(spec.base)


def _run_processes(
    spec: SweepSpec, url: str, workers: int, say: Callable[[str], None] | None
) -> None:
    import optuna

    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [
        ctx.Process(target=_worker_main, args=(spec, url, i, threads), name=f"worker-{i}")
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    storage = open_storage(url, spec, heartbeat=False)
    study = optuna.load_study(study_name=spec.study, storage=storage)
    seen: set[int] = set()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_S)
            if say is None:
                continue
            trials = trials_of(study)
            for t in trials:
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    say(progress_line(spec, trials, t))
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group; a signal sent to us alone is passed on
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
        raise
    for p in procs:
        p.join()
    bad = [f"{p.name} exit {p.exitcode}" for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise HarnessError(f"study {spec.study}: {', '.join(bad)}")


def load_study(study: str, *, out: str = "runs", storage: str | None = None) -> Any:
    import optuna

    url = storage or f"sqlite:///{(Path(out) / study / STUDY_DB).resolve()}"
    if storage is None and not (Path(out) / study / STUDY_DB).exists():
        raise HarnessError(
            f"study {study}: no {Path(out) / study / STUDY_DB}; pass --storage URL for a "
            "study kept elsewhere"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=open_storage(url, heartbeat=False))
    except KeyError:
        raise HarnessError(f"study {study}: not found in {mask_url(url)}") from None
