import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# tests never go online, even on a machine that is logged in to W&B
os.environ["WANDB_MODE"] = "offline"

import pytest
import torch

from harness.config import TrialConfig, with_overrides
from harness.data.synth import generate

# the CI box has 2 cores; more threads than cores only adds contention
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def two_threads():
    """torch on 2 threads whatever OMP_NUM_THREADS says: a convolution's float sums depend on the
    thread count, so a test that asserts recorded metrics or verdicts near a threshold pins it
    (the 2 that the 2-core CI box uses)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small built-in-style dataset shared by the slower tests (generated once)."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(root, seed=0, n_train=32, n_val=12, n_test=2, size=64)
    return root


@pytest.fixture
def tiny_cfg(tiny_data, tmp_path):
    """A trial config that trains in seconds; everything it writes stays under tmp_path."""
    return with_overrides(
        TrialConfig(),
        {
            "name": "t",
            "out_dir": str(tmp_path / "runs"),
            "data.root": str(tiny_data),
            "data.cache_dir": str(tmp_path / "cache"),
            "data.image_size": 64,
            "model.width": 0.125,
            "model.fc_channels": 32,
            "model.fc_kernel": 2,
            "train.epochs": 1,
            "train.batch_size": 8,
        },
    )
