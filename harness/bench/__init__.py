"""Benchmarks: each prints a ratio measured in one run (``harness bench``, ``make bench``).

The names live here, not in ``run.py``, so that the CLI can check ``--only`` and start the GPU
check (``gpu.py``) without importing Optuna and W&B, which a bare GPU machine may not have.
"""

# what ``harness bench`` runs by default, in this order
BENCHMARKS = ("a", "b", "c", "d", "eda", "outliers")
# the GPU check: only when named (its paper-size model would take hours on a CPU)
GPU_CHECK = "gpu"
