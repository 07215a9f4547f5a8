"""Where a study lives: SQLite by default (``runs/<study>/study.db``, shared by the processes of one
machine), or any SQLAlchemy URL (``postgresql://...``) that workers on several machines join.
RDB heartbeats fail a trial whose worker died (SIGKILL) and re-queue it with the same parameters.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from harness.config.sweep import SweepSpec
from harness.errors import HarnessError
from harness.secrets import mask_url

STUDY_DB = "study.db"


def sqlite_url(study_dir: Path) -> str:
    """The default storage of a study: its SQLite file (the one place this URL is built)."""
    return f"sqlite:///{(Path(study_dir) / STUDY_DB).resolve()}"


def storage_url(spec: SweepSpec) -> str:
    if spec.storage:
        return spec.storage
    return sqlite_url(spec.study_dir)


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for another database or an in-memory one."""
    scheme, sep, rest = url.partition(":///")
    if not sep or not scheme.startswith("sqlite") or rest in ("", ":memory:"):
        return None
    return Path(rest.split("?", 1)[0])


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
            heartbeat_interval=spec.heartbeat.interval,
            grace_period=spec.heartbeat.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=spec.heartbeat.max_retry
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
        except sqlalchemy.exc.DatabaseError as exc:  # e.g. a study.db that is not SQLite at all
            first = str(exc.orig or exc).splitlines()[0]
            raise HarnessError(
                f"--storage {mask_url(url)}: not a usable database ({mask_url(first)})"
            ) from None
    detail = str(last).splitlines()[0] if last else "unknown error"
    raise HarnessError(f"--storage {mask_url(url)}: cannot open ({mask_url(detail)})")
