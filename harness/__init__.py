"""harness: DeconvNet trials in Optuna sweeps, tracked in W&B, with silent-bug checks."""

__version__ = "0.1.0"
