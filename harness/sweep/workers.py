"""Running a study: one or several worker processes on this machine, each running trials until the
study holds ``n_trials`` finished ones; Ctrl-C and SIGTERM stop cleanly. On a machine with GPUs
each worker gets its own (``harness.sweep.devices``)."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna

from harness.config.sweep import SweepSpec
from harness.data.loaders import load_data
from harness.errors import HarnessError
from harness.fit.launch import check_nproc
from harness.secrets import mask_url
from harness.sweep.best import write_best
from harness.sweep.devices import WorkerSlot, assign_devices, describe
from harness.sweep.objective import Objective
from harness.sweep.storage import open_storage, storage_url
from harness.sweep.study import create_study, make_pruner, make_sampler
from harness.sweep.view import counts, progress_line, record_outliers, trials_of
from harness.sweep.wandb_run import record_study_run

POLL_S = 1.0  # how often an idle worker looks for stale trials or a free slot


def run_worker(
    spec: SweepSpec,
    url: str,
    *,
    worker: int = 0,
    console: Any = None,
    say: Callable[[str], None] | None = None,
    verbose: bool = False,
    nproc: int = 1,
) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (or the timeout passes);
    ``nproc``: the processes of each trial (``--nproc-per-trial``)."""
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
    objective = Objective(spec, console, verbose=verbose, nproc=nproc, url=url)
    deadline = time.monotonic() + spec.timeout if spec.timeout else math.inf
    # failures of earlier runs of the study do not count: a fixed sweep file must run again
    fails0 = counts(trials_of(study))["FAIL"]

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
        failed = c["FAIL"] - fails0
        if failed > 2 * spec.n_trials + 2:  # a sweep where every trial fails must end
            raise HarnessError(
                f"study {spec.study}: {failed} failed trials in this run; stopping (see the "
                "trial table)"
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
        if objective.refused is not None:
            number, exc = objective.refused
            raise HarnessError(
                f"study {spec.study}: trial {number} refused before training: {exc} (every "
                "trial would be; fix it and run the same command again)"
            )


def _worker_main(
    spec: SweepSpec,
    url: str,
    worker: int,
    threads: int,
    cuda_visible_devices: str | None = None,
    nproc: int = 1,
) -> None:
    """Entry point of a ``--workers`` process (spawned: a clean interpreter per worker).

    ``CUDA_VISIBLE_DEVICES`` is set first: CUDA reads it once, when it starts, and nothing in a
    fresh interpreter has started it yet (importing torch does not)."""
    if cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        with _terminate_as_interrupt():
            run_worker(spec, url, worker=worker, nproc=nproc)
    except KeyboardInterrupt:
        sys.exit(130)
    except HarnessError as exc:
        print(f"worker {worker}: error: {exc}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a stopping container) ends a trial like Ctrl-C: marked failed, W&B
    run closed, instead of a trial left running until its heartbeat goes stale."""

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


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int | None = 1,
    gpus: str | None = None,
    console: Any = None,
    verbose: bool = False,
    nproc_per_trial: int = 1,
) -> Any:
    """Create the study once, run the workers, write best.yaml; returns the study.

    ``workers``/``gpus``: see ``assign_devices`` (``workers=None``: one per visible GPU, or one
    on the CPU). ``console``: one line per finished trial and a live display of the running one;
    ``verbose`` adds each trial's full output (audit table, epoch lines). ``nproc_per_trial``:
    each trial on that many processes (``harness.sweep.ranks``), each worker with as many GPUs."""
    slots = worker_slots(spec, workers, gpus, nproc_per_trial)
    with _terminate_as_interrupt():
        return _run_sweep(spec, slots, console, verbose, nproc_per_trial)


def worker_slots(
    spec: SweepSpec, workers: int | None, gpus: str | None, nproc: int = 1
) -> list[WorkerSlot]:
    """The workers this machine runs: the GPUs torch sees, unless the trials run on the CPU."""
    import torch

    device = spec.base.train.device
    on_gpu = device == "auto" or device.startswith("cuda")
    visible = torch.cuda.device_count() if on_gpu and torch.cuda.is_available() else 0
    check_nproc(nproc, device, visible, option="--nproc-per-trial")
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    cores = os.cpu_count() or 1
    slots = assign_devices(workers, gpus, visible, env, cpu_count=cores, per_worker=nproc)
    if device.startswith("cuda:") and any(s.cuda_visible_devices is not None for s in slots):
        raise HarnessError(
            f"train.device={device}: each sweep worker sees only its own GPU (as cuda:0); "
            "use device auto or cuda with --gpus"
        )
    return slots


def _run_sweep(
    spec: SweepSpec, slots: list[WorkerSlot], console: Any, verbose: bool, nproc: int
) -> Any:
    url = storage_url(spec)
    say = (lambda m: console.print(m, markup=False, soft_wrap=True)) if console else None
    if say is not None:
        say(
            f"study {spec.study}: storage {mask_url(url)}, {spec.sampler.name} sampler, "
            f"{spec.pruner.name} pruner, target {spec.n_trials} trials, {describe(slots)}"
        )
    study = create_study(spec, url)
    _check_data(spec)
    if len(slots) == 1 and slots[0].cuda_visible_devices is None:
        run_worker(spec, url, console=console, say=say, verbose=verbose, nproc=nproc)
    else:
        _run_processes(spec, url, slots, say, nproc)
    trials = trials_of(study)
    record_outliers(study, trials)
    write_best(spec, trials)
    record_study_run(study, spec, trials, say)
    return study


def _check_data(spec: SweepSpec) -> None:
    """Load the data once up front: a bad dataset is one error, not n failed trials."""
    load_data(spec.base)


def worker_processes(
    ctx: Any, spec: SweepSpec, url: str, slots: list[WorkerSlot], nproc: int = 1
) -> list[Any]:
    """One (unstarted) process per slot; what each gets is its arguments, nothing inherited."""
    return [
        ctx.Process(
            target=_worker_main,
            args=(spec, url, s.index, s.threads, s.cuda_visible_devices, nproc),
            name=f"worker-{s.index}",
        )
        for s in slots
    ]


def _run_processes(
    spec: SweepSpec,
    url: str,
    slots: list[WorkerSlot],
    say: Callable[[str], None] | None,
    nproc: int = 1,
) -> None:
    procs = worker_processes(multiprocessing.get_context("spawn"), spec, url, slots, nproc)
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
