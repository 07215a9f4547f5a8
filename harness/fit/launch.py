"""``harness trial --nproc N``: one trial as N ranks under PyTorch's own launcher (torchrun).

The launcher runs ``torch.distributed.run --standalone --nproc-per-node N -m harness trial
--config <the resolved config>`` in a child process (this module's ``agent_main``: torchrun's
``run`` with its failures caught), waits for it, and learns from it which rank failed with
which exit code. torchrun itself stops the other ranks when one fails (SIGTERM, then SIGKILL
after 30 s); a rank whose launcher dies gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``, set
in ``harness.fit.distributed``), so nothing is left running.

A rank's exit code says what happened: 0 finished (or pruned), 1 the trial ended as failed and
its record says why, 2 a user error (one line on stderr), 130 interrupted. Any other code (a
crash, a signal, an injected fault) is the cause of a failed trial, and the launcher writes it
into rank 0's summary.json: ``rank 1 exited with code 3; rank 0: <what rank 0 saw>``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import TrialConfig, save_config
from harness.errors import HarnessError, WeightsError
from harness.fit.record import amend_summary

RECORDED_FAILURE = 1  # a rank's exit code when its trial ended as failed (the record says why)
USER_ERROR = 2
STOP_WAIT_S = 60  # after Ctrl-C: how long the ranks get to write their record


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exitcode: int  # negative: killed by that signal

    def describe(self) -> str:
        if self.exitcode < 0:
            try:
                name = signal.Signals(-self.exitcode).name
            except ValueError:
                name = f"signal {-self.exitcode}"
            return f"rank {self.rank} was killed by {name}"
        return f"rank {self.rank} exited with code {self.exitcode}"


@dataclass(frozen=True)
class LaunchResult:
    returncode: int  # the launcher's (torchrun's) exit code
    failures: tuple[RankFailure, ...]  # the ranks torchrun saw fail, by rank


def check_nproc(nproc: int, device: str, cuda_count: int, *, option: str = "--nproc") -> None:
    """One-line errors for an ``--nproc`` that cannot run on ``device`` (``cuda_count``: the
    GPUs this process sees)."""
    given = f"{option}={nproc}"
    if nproc < 1:
        raise HarnessError(f"{given}: must be >= 1")
    if nproc == 1:
        return
    if device == "mps":
        raise HarnessError(f"{given} with train.device=mps: use cuda or cpu (gloo)")
    if device.startswith("cuda:"):
        raise HarnessError(
            f"{given} with train.device={device}: each rank runs on cuda:LOCAL_RANK; "
            "use --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    if device == "cuda" and cuda_count == 0:
        raise HarnessError(f"{given} with train.device=cuda: CUDA is not available")
    if device in ("cuda", "auto") and 0 < cuda_count < nproc:
        raise HarnessError(f"{given}: only {cuda_count} CUDA GPU(s) visible (one rank per GPU)")


def torchrun_args(nproc: int, harness_args: Sequence[str]) -> list[str]:
    """torchrun's arguments for ``harness <harness_args>`` on ``nproc`` ranks of this machine."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "harness", *harness_args]


def rank_args(cfg: TrialConfig, config: Path) -> list[str]:
    """Each rank's ``harness`` arguments: the resolved config, written to ``config``, and its
    run folder (``--config`` alone would give the run a new name)."""
    return ["trial", "--config", str(config), "--name", cfg.name, "--out", cfg.out_dir]


def command_line(nproc: int, harness_args: Sequence[str]) -> str:
    """What the launcher starts, as the user could type it."""
    return " ".join(["torchrun", *torchrun_args(nproc, harness_args)])


def launch_trial(
    cfg: TrialConfig,
    nproc: int,
    flags: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> LaunchResult:
    """Train ``cfg`` on ``nproc`` ranks: each runs ``harness trial`` on the resolved config
    (written to a temporary file) plus ``flags``; ``announce`` gets the command line first."""
    preflight(cfg)
    with tempfile.TemporaryDirectory(prefix="harness-trial-") as tmp:
        config = Path(tmp) / "config.yaml"
        save_config(cfg, config)
        args = [*rank_args(cfg, config), *flags]
        if announce is not None:
            announce(command_line(nproc, args))
        return launch(nproc, args, env=env)


def preflight(cfg: TrialConfig) -> None:
    """What every rank would refuse, checked once before any rank starts: otherwise each rank
    prints the same error, and torchrun adds its own lines about the ranks it then stops."""
    from harness.fit.loop import resolve_device
    from harness.plugins import load_attr

    resolve_device(cfg.train.device)
    if cfg.model.user:  # the user named it (--model): importing it here is what a rank does
        load_attr(cfg.model.name, "model.name")
    if cfg.optim.builder is not None:
        load_attr(cfg.optim.builder, "optim.builder")
    if cfg.model.weights_path and not Path(cfg.model.weights_path).is_file():
        raise WeightsError(f"{cfg.model.weights_path}: weights file not found")


def torch_threads() -> int:
    import torch  # only when ranks are started: `harness --help` stays fast

    return torch.get_num_threads()


def rank_environment(nproc: int, env: Mapping[str, str], threads: int) -> dict[str, str]:
    """The ranks' environment: ``env``, with the CPU threads this process has shared among the
    ranks (``OMP_NUM_THREADS``) unless the user set it. N ranks with every core each would
    oversubscribe the cores; torchrun's own default is 1 thread per rank, with a warning."""
    out = dict(env)
    out.setdefault("OMP_NUM_THREADS", str(max(1, threads // nproc)))
    return out


def launch(
    nproc: int, harness_args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> LaunchResult:
    """Run the ranks and wait for them; Ctrl-C (or SIGTERM turned into it) is passed on, the
    ranks write their record, then it propagates."""
    env = rank_environment(nproc, os.environ if env is None else env, torch_threads())
    with tempfile.TemporaryDirectory(prefix="harness-launch-") as tmp:
        status = Path(tmp) / "failures.json"
        cmd = [sys.executable, "-m", "harness.fit.launch", str(status)]
        proc = subprocess.Popen([*cmd, *torchrun_args(nproc, harness_args)], env=env)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # torchrun passes it on to every rank
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        failures = read_failures(status)
    return LaunchResult(returncode, failures)


def read_failures(path: Path) -> tuple[RankFailure, ...]:
    if not path.exists():
        return ()
    rows = json.loads(path.read_text())
    found = (RankFailure(int(r["rank"]), int(r["exitcode"])) for r in rows)
    return tuple(sorted(found, key=lambda f: f.rank))


def cause(failures: Sequence[RankFailure]) -> RankFailure | None:
    """The failure that ended the trial: the lowest rank whose exit code is not one of the
    harness's own (a crash, a signal, an injected fault), a SIGTERM last (that is how torchrun
    stops the survivors); None when every failed rank ended with a recorded failure (rank 0's
    record then says why)."""
    own = (RECORDED_FAILURE, USER_ERROR, 130)
    crashed = [f for f in failures if f.exitcode not in own]
    crashed.sort(key=lambda f: (f.exitcode == -int(signal.SIGTERM), f.rank))
    return crashed[0] if crashed else None


def failure_reason(failures: Sequence[RankFailure], rank0_reason: str | None) -> str | None:
    """The reason a failed trial's summary.json gets: what ended it, then what rank 0 saw."""
    found = cause(failures)
    if found is None:
        if rank0_reason is None and failures:
            return failures[0].describe()
        return None
    text = found.describe()
    if not rank0_reason or found.rank == 0:
        return text
    return f"{text}; rank 0: {rank0_reason[:200]}"


def settle(run_dir: Path, result: LaunchResult) -> tuple[dict[str, Any] | None, str | None]:
    """After the ranks ended: a dead rank's cause written into rank 0's summary.json. Returns
    the summary (None when rank 0 wrote none) and why the trial failed (None: it did not)."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    rank0 = None if summary is None else summary.get("reason")
    if not result.failures:
        return summary, None
    reason = failure_reason(result.failures, rank0)
    if reason is not None and summary is not None:
        summary = amend_summary(run_dir, status="failed", reason=reason)
    return summary, reason or rank0


def exit_code(result: LaunchResult, status: str | None) -> int:
    """``harness trial --nproc``'s exit code: 0 finished or pruned, 2 a user error on a rank,
    1 a failed trial (a dead rank included)."""
    if result.returncode == 0 and status not in ("failed", "aborted"):
        return 0
    if any(f.exitcode == USER_ERROR for f in result.failures) and status is None:
        return USER_ERROR
    return 1


def agent_main(argv: Sequence[str]) -> int:
    """The child process: torchrun's ``run`` with ``argv[1:]``, its failures written as JSON
    to ``argv[0]`` (rank and exit code per failed rank)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    status, args = Path(argv[0]), list(argv[1:])
    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        rows: list[dict[str, Any]] = [
            {"rank": rank, "exitcode": failure.exitcode} for rank, failure in exc.failures.items()
        ]
        status.write_text(json.dumps(rows))
        return 1
    except SignalException as exc:  # the ranks were stopped with the same signal
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
