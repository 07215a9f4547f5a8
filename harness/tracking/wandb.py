"""Weights & Biases: one run per trial, and the study's own run.

Online when logged in and ``WANDB_MODE`` allows it, offline under ``runs/<name>/wandb/``
otherwise. W&B failing to start online falls back to offline, then to the local record alone,
and a W&B error mid-run disables W&B for that trial, each time with one message.
"""

from __future__ import annotations

import netrc
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness import __version__
from harness.config import FLAT_KEYS, TrialConfig
from harness.plugins import source_record
from harness.secrets import mask_url, redact
from harness.tracking.base import Say, TrialStart, say_once, stderr
from harness.tracking.panels import PanelTracker

# exit codes W&B turns into run states: non-zero is "failed"; a pruned trial is not a crash
EXIT_CODES = {"finished": 0, "pruned": 0, "failed": 1, "aborted": 2}
MEDIA_KEY = "val/masks"
AUDIT_TABLE_KEY = "audit/modules"
# W&B's own per-run folders, all under runs/<name>/wandb/ so nothing lands in $HOME
WANDB_DIR_ENV = {
    "WANDB_CACHE_DIR": "cache",
    "WANDB_DATA_DIR": "data",
    "WANDB_CONFIG_DIR": "config",
    "WANDB_ARTIFACT_DIR": "artifacts",
}
INIT_TIMEOUT_S = 30.0  # W&B's default is 90 s, long for a sweep worker without network
MAX_TAG = 64  # W&B's limit on a tag's length


_lock = threading.Lock()
_online_broken: list[str] = []  # why online failed earlier in this process; later trials skip it


# --- what a run holds ----------------------------------------------------------------------


def flat_config(cfg: TrialConfig) -> dict[str, Any]:
    """The swept and structural hyperparameters as top-level keys (see ``FLAT_KEYS``)."""
    out: dict[str, Any] = {}
    for key, dotted in FLAT_KEYS.items():
        section, name = dotted.split(".")
        out[key] = getattr(getattr(cfg, section), name)
    return out


def run_config(
    cfg: TrialConfig,
    dataset: Mapping[str, Any],
    class_names: Sequence[str],
    num_params: int,
    extra: Mapping[str, Any] | None = None,
    runtime: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The W&B config: flat keys for panels, the whole trial config, the dataset and, when
    ``fit`` resolved them, the runtime settings (``device`` as the machine numbers it: the GPU
    a sweep worker ran on)."""
    resolved = dict(runtime or {})
    return {
        **flat_config(cfg),
        **(extra or {}),
        **({"device": resolved.get("device"), "runtime": resolved} if resolved else {}),
        "num_params": num_params,
        "trial_config": cfg.to_dict(),
        "dataset": dict(dataset),
        "class_names": list(class_names),
        "harness_version": __version__,
        **code_config(cfg),
    }


def code_config(cfg: TrialConfig) -> dict[str, Any]:
    """``model_source`` / ``optimizer_source``: the user code's import path, args and sha256."""
    out: dict[str, Any] = {}
    if cfg.model.user:
        out["model_source"] = source_record(cfg.model.name, "model.name", cfg.model.args)
    if cfg.optim.builder is not None:
        out["optimizer_source"] = source_record(cfg.optim.builder, "optim.builder")
    return out


def _clean_tag(tag: str) -> str:
    return tag.strip()[:MAX_TAG]


def start_tags(cfg: TrialConfig, audit: Any, extra: Sequence[str] = ()) -> list[str]:
    tags = [*extra, *(f"audit:{f.code}" for f in audit.findings)]
    if cfg.train.inject_bug:
        tags.append(f"inject:{cfg.train.inject_bug}")
    return list(dict.fromkeys(_clean_tag(t) for t in tags if t.strip()))


def end_tags(summary: Mapping[str, Any]) -> list[str]:
    """Flags (audit findings, nan-loss, ...) and any status but finished, for tag filters."""
    tags = list(summary.get("flags") or [])
    if summary.get("status") != "finished":
        tags.append(str(summary.get("status")))
    return [_clean_tag(t) for t in tags]


def audit_summary(audit: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"audit/ok": audit.ok, "audit/n_findings": len(audit.findings)}
    for f in audit.findings:
        out[f"audit/{f.code}"] = f.message
    return out


AUDIT_COLUMNS: list[str | int] = [  # wandb.Table's annotation
    "module", "params", "trainable", "in_optimizer", "left_out", "lrs", "frozen",
]  # fmt: skip


def audit_rows(audit: Any) -> list[list[Any]]:
    return [
        [
            m.module,
            m.params,
            m.trainable,
            m.in_optimizer,
            m.trainable - m.in_optimizer,
            ", ".join(f"{v:.3g}" for v in m.lrs),
            m.frozen_on_purpose,
        ]
        for m in audit.modules
    ]


def run_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json for W&B: "final" is left out because W&B's summary already holds the last
    value of every logged key, and "tracking" describes W&B itself."""
    return {k: v for k, v in summary.items() if k not in ("final", "tracking")}


def _has_credentials(environ: Mapping[str, str]) -> bool:
    """Logged in: an API key or identity token in the environment, or a netrc entry for the host."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    path = Path(environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        return bool(host) and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(environ: Mapping[str, str]) -> tuple[str, str]:
    """``(online|offline|disabled, why)``: WANDB_MODE first, then whether credentials exist."""
    mode = environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return "disabled", "WANDB_MODE=disabled"
    if environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):  # the legacy switch
        return "disabled", "WANDB_DISABLED=true"
    if mode in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={mode}"
    if not _has_credentials(environ):
        # never online without credentials: wandb.init would prompt for a key and block a sweep
        return "offline", "not logged in: `wandb login` or WANDB_API_KEY to go online"
    if _online_broken:
        return (
            "offline",
            f"online failed earlier in this process: {_online_broken[0]}",
        )
    return "online", "logged in"


@contextmanager
def wandb_env(root: Path) -> Iterator[None]:
    """Point W&B's cache/data/config/artifact folders into the run folder for this trial.

    wandb reads these from os.environ when it needs them (artifact staging, caches), so they stay
    set from init to finish and are restored afterwards. Process-wide: concurrent trials in
    threads of one process may stage into each other's folders (still never into $HOME).
    """
    before = {k: os.environ.get(k) for k in WANDB_DIR_ENV}
    for key, sub in WANDB_DIR_ENV.items():
        os.environ[key] = str((root / sub).resolve())
    # W&B records the command line (sys.argv) as run metadata: a --storage URL's password
    # must not go with it
    argv = list(sys.argv)
    sys.argv[:] = [mask_url(a) for a in argv]
    try:
        yield
    finally:
        sys.argv[:] = argv
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WandbTracker(PanelTracker):
    """One W&B run per trial. Identity: ``group`` (the study; "manual" for a lone trial),
    ``job_type`` "trial", name = the run folder name, ``tags``; ``extra_config`` adds flat keys
    (e.g. the sweep's trial number) next to ``FLAT_KEYS``."""

    backend = "wandb"

    def __init__(
        self,
        *,
        group: str = "manual",
        job_type: str = "trial",
        tags: Sequence[str] = (),
        extra_config: Mapping[str, Any] | None = None,
        say: Say = stderr,
    ) -> None:
        super().__init__(say)
        self.group = group
        self.job_type = job_type
        self.tags = list(tags)
        self.extra_config = dict(extra_config or {})
        self.run: Any = None
        self.mode = "none"
        self.log_model = False
        self._env: ExitStack | None = None
        self._run_dir: Path | None = None
        self._info: dict[str, Any] = {"backend": self.backend, "mode": "not started"}

    # the W&B calls, each guarded: W&B trouble never ends a trial -------------------------

    def start(self, trial: TrialStart) -> None:
        cfg = trial.cfg
        self._run_dir = cfg.run_dir
        self.log_model = cfg.tracking.log_model
        mode, why = resolve_mode(os.environ)
        if mode == "disabled":
            self._info = {"backend": self.backend, "mode": "disabled", "why": why}
            say_once(
                self.say, "disabled", f"W&B disabled ({why}): trials are recorded locally only"
            )
            return
        try:
            self._start(trial, mode, why)
        except Exception as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")
            if self.run is not None:
                try:
                    self.run.finish(exit_code=1)
                except Exception as also:  # said with the first failure, not instead of it
                    reason += f"; closing the W&B run failed too: {redact(str(also))}"
            self._local_only(reason)

    # long: the online -> offline -> record-only fallback, one attempt per mode, in order
    def _start(self, trial: TrialStart, mode: str, why: str) -> None:
        super().start(trial)
        cfg, bundle, audit = trial.cfg, trial.bundle, trial.audit
        os.environ.setdefault("WANDB_SILENT", "true")  # before the import: no banner per trial
        try:
            import wandb
        except Exception as exc:  # a broken install must not end the trial either
            self._local_only(f"cannot import wandb: {redact(str(exc))}")
            return

        root = cfg.run_dir / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        self._env = ExitStack()
        self._env.enter_context(wandb_env(root))
        config = run_config(
            cfg, bundle.info, bundle.class_names,
            sum(p.numel() for p in trial.model.parameters()), self.extra_config, trial.runtime,
        )  # fmt: skip
        tags = start_tags(cfg, audit, self.tags)
        for attempt in ["online", "offline"] if mode == "online" else ["offline"]:
            try:
                self.run = wandb.init(
                    project=cfg.tracking.project,
                    entity=cfg.tracking.entity,
                    group=self.group,
                    job_type=self.job_type,
                    name=cfg.name,
                    tags=tags,
                    config=config,
                    mode=attempt,  # type: ignore[arg-type]
                    dir=str(cfg.run_dir),
                    reinit="create_new",  # a trial never inherits another trial's run
                    settings=wandb.Settings(
                        silent=True,
                        quiet=True,
                        console="off",  # progress bars would flood the run's log
                        init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT_S),
                    ),
                )
                self.mode = attempt
                break
            except Exception as exc:
                # wandb's own hint names a Python setting; WANDB_INIT_TIMEOUT is ours
                reason = redact(f"{type(exc).__name__}: {exc}").split(" Consider increasing")[0]
                if attempt == "online":
                    with _lock:
                        _online_broken[:] = [reason]
                    self.say(
                        f"W&B could not start online ({reason}); falling back to offline "
                        "(WANDB_INIT_TIMEOUT sets how long to wait)"
                    )
                    why = "online failed to start"
                else:
                    self._local_only(reason)
                    return
        self._info = {
            "backend": self.backend,
            "mode": self.mode,
            "project": cfg.tracking.project,
            "group": self.group,
            "run_id": self.run.id,
            "dir": self.run.settings.sync_dir,
        }
        if self.mode == "offline":
            say_once(
                self.say,
                "offline",
                f"W&B offline, {why}. Upload later with: wandb sync {self.run.settings.sync_dir}"
                "  (each trial's run is in <run folder>/wandb/offline-run-*)",
            )
        else:
            self._info["url"] = self.run.url
            say_once(self.say, "online", f"W&B online: {self.run.get_project_url()}")
        self._guard(self._log_start, audit)

    def _log_start(self, audit: Any) -> None:
        import wandb

        self.run.summary.update(audit_summary(audit))
        self.run.summary[AUDIT_TABLE_KEY] = wandb.Table(
            columns=AUDIT_COLUMNS, data=audit_rows(audit)
        )

    def log_epoch(self, row: Mapping[str, Any], *, final: bool) -> None:
        if self.run is not None:
            self._guard(self._log_epoch, row, final)

    def _log_epoch(self, row: Mapping[str, Any], final: bool) -> None:
        import wandb

        epoch = int(row["epoch"])
        data = dict(row)
        pred = self._predict_if_due(epoch, final)
        if pred is not None and self.panel is not None:
            panel = self.panel
            data[MEDIA_KEY] = [
                wandb.Image(
                    image,
                    caption=caption,
                    masks={
                        "prediction": {"mask_data": p, "class_labels": panel.class_labels},
                        "ground_truth": {"mask_data": t, "class_labels": panel.class_labels},
                    },
                )
                for image, p, t, caption in zip(
                    panel.images, pred, panel.truth, panel.captions(epoch), strict=True
                )
            ]
        # one call per epoch, committed at once: the dashboard is never an epoch behind
        self.run.log(data, step=epoch, commit=True)

    def finish(self, summary: Mapping[str, Any]) -> None:
        try:
            if self.run is not None:
                self._guard(self._finish, summary)
        finally:
            self.run = None
            if self._env is not None:
                self._env.close()
                self._env = None

    def _finish(self, summary: Mapping[str, Any]) -> None:
        import wandb

        run = self.run
        run.summary.update(run_summary(summary))
        best = self._run_dir / "best.pt" if self._run_dir is not None else None
        if self.log_model and best is not None and best.is_file():
            artifact = wandb.Artifact(
                f"model-{run.name}",
                type="model",
                metadata={k: summary.get(k) for k in ("status", "best_val_mIoU", "best_epoch")},
            )
            # immutable: no staging copy of a checkpoint that does not change after the trial
            artifact.add_file(str(best), name="best.pt", policy="immutable")
            run.log_artifact(artifact, aliases=["best", "latest"])
        run.tags = tuple(dict.fromkeys([*run.tags, *end_tags(summary)]))
        run.finish(exit_code=EXIT_CODES.get(str(summary.get("status")), 1))

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            run, self.run = self.run, None
            self._info["error"] = redact(f"{type(exc).__name__}: {exc}")
            self.say(
                f"W&B logging failed ({self._info['error']}); the rest of this trial is "
                "recorded locally only"
            )
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception as also:  # already broken; the local record is complete
                    self._info["error"] += f"; closing the W&B run failed too: {redact(str(also))}"

    def _local_only(self, reason: str) -> None:
        self.run = None
        self._info = {"backend": self.backend, "mode": "local-only", "error": reason}
        self.say(f"W&B could not start ({reason}): this trial is recorded locally only")
        if self._env is not None:
            self._env.close()
            self._env = None

    def _backend_info(self) -> dict[str, Any]:
        return dict(self._info)
