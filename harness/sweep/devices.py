"""Which GPU each sweep worker gets: one ``CUDA_VISIBLE_DEVICES`` value per worker process.

``assign_devices`` is a pure function of the command line (``--workers``, ``--gpus``), the number
of GPUs this process sees and its own ``CUDA_VISIBLE_DEVICES``, so it is tested without a GPU.

- ``--gpus`` numbers GPUs as this process sees them (0 .. visible-1); under a
  ``CUDA_VISIBLE_DEVICES`` of its own they are translated into that list's entries, so
  ``CUDA_VISIBLE_DEVICES=4,5 harness sweep --gpus 1`` runs its worker on the machine's GPU 5;
- without ``--workers``: one worker per GPU in ``--gpus``, else one per visible GPU, else (no
  CUDA) one worker on the CPU, as before;
- more workers than GPUs share them round-robin (worker i on GPU ``gpus[i % len(gpus)]``): small
  models leave a GPU idle between steps, so two workers on one GPU is a choice, not a mistake;
- a worker on the CPU (no GPU visible, or ``train.device: cpu``) keeps the environment as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError


@dataclass(frozen=True)
class WorkerSlot:
    index: int  # the worker number (worker-<index>)
    cuda_visible_devices: str | None  # set in the worker before CUDA starts; None: inherited
    threads: int  # torch CPU threads of the worker


def parse_gpus(gpus: str) -> list[int]:
    """``"0,1,2,3"`` -> ``[0, 1, 2, 3]``, with one-line errors."""
    parts = [p.strip() for p in gpus.split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise HarnessError(f"--gpus {gpus}: must be GPU numbers separated by commas, e.g. 0,1,2,3")
    numbers = [int(p) for p in parts]
    for n in numbers:
        if numbers.count(n) > 1:
            raise HarnessError(f"--gpus {gpus}: GPU {n} is given twice")
    return numbers


def assign_devices(
    workers: int | None,
    gpus: str | None,
    visible: int,
    env_visible: str | None,
    *,
    cpu_count: int = 1,
    per_worker: int = 1,
) -> list[WorkerSlot]:
    """One slot per worker process: its ``CUDA_VISIBLE_DEVICES`` and its CPU threads.

    ``visible``: the GPUs this process sees (0 without CUDA, or when the trials run on the CPU);
    ``env_visible``: this process's ``CUDA_VISIBLE_DEVICES`` (None when unset); ``per_worker``:
    the GPUs each worker gets (``--nproc-per-trial``: one per rank of its trials), consecutive
    ones from the list (``--gpus 0,1,2,3`` in twos: workers on 0,1 and 2,3)."""
    if workers is not None and workers < 1:
        raise HarnessError(f"--workers {workers}: must be >= 1")
    if gpus is not None:
        chosen = parse_gpus(gpus)
        if visible == 0:
            raise HarnessError(f"--gpus {gpus}: no CUDA GPU is visible (the trials run on the CPU)")
        for n in chosen:
            if n >= visible:
                raise HarnessError(f"--gpus {gpus}: GPU {n} is not visible ({visible} visible)")
    else:
        chosen = list(range(visible))
    if not chosen:  # the CPU: as before, one worker unless --workers says more
        n = workers or 1
        return [WorkerSlot(i, None, _threads(cpu_count, n)) for i in range(n)]
    if len(chosen) % per_worker:
        listed = ",".join(str(g) for g in chosen)
        raise HarnessError(
            f"--nproc-per-trial {per_worker}: the {len(chosen)} GPU(s) {listed} do not split "
            f"into groups of {per_worker} (one GPU per rank)"
        )
    groups = [chosen[i : i + per_worker] for i in range(0, len(chosen), per_worker)]
    n = workers if workers is not None else len(groups)
    if n == 1 and gpus is None:
        # one worker that sees what this process sees: nothing to restrict
        return [WorkerSlot(0, None, _threads(cpu_count, 1))]
    ids = _visible_ids(env_visible, visible)
    return [
        WorkerSlot(i, ",".join(ids[g] for g in groups[i % len(groups)]), _threads(cpu_count, n))
        for i in range(n)
    ]


def describe(slots: list[WorkerSlot]) -> str:
    """``4 worker(s)`` on the CPU; ``4 worker(s) on GPUs 0,1,2,3`` (CUDA_VISIBLE_DEVICES values)."""
    text = f"{len(slots)} worker(s)"
    gpus = [s.cuda_visible_devices for s in slots if s.cuda_visible_devices is not None]
    if gpus:
        text += " on GPUs " + ",".join(gpus)
    return text


def _visible_ids(env_visible: str | None, visible: int) -> list[str]:
    """What to put into a child's CUDA_VISIBLE_DEVICES for each GPU this process sees."""
    listed = [s.strip() for s in (env_visible or "").split(",") if s.strip()]
    if len(listed) >= visible:
        return listed[:visible]
    return [str(i) for i in range(visible)]


def _threads(cpu_count: int, workers: int) -> int:
    return max(1, cpu_count // workers)
