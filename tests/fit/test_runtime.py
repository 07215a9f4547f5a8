"""The resolved runtime settings (auto config values), pure functions of device and machine."""

import json

import pytest
import torch
from torch import nn

from harness.config import TrialConfig, config_from_dict, with_overrides
from harness.errors import ConfigError
from harness.fit.runtime import (
    Runtime,
    auto_num_workers,
    compile_error,
    compiled,
    physical_device,
    resolve_runtime,
)


def test_cpu_resolves_to_what_the_harness_always_did():
    rt = resolve_runtime(TrialConfig(), "cpu", cores=16, bf16=False, env_visible="0")
    assert rt == Runtime(
        device="cpu",
        torch_device="cpu",
        cuda_visible_devices=None,
        num_workers=0,
        pin_memory=False,
        persistent_workers=False,
        deterministic=True,
        cudnn_benchmark=False,
        amp=None,
        channels_last=False,
        compile=False,
    )


def test_cuda_defaults_a_gpu_user_expects():
    rt = resolve_runtime(TrialConfig(), "cuda:0", cores=4, bf16=True, env_visible="2")
    assert rt.device == "cuda:2" and rt.torch_device == "cuda:0"
    assert rt.cuda_visible_devices == "2"
    assert (rt.num_workers, rt.pin_memory, rt.persistent_workers) == (4, True, True)
    assert (rt.deterministic, rt.cudnn_benchmark) == (False, True)
    assert rt.amp == "bfloat16" and rt.channels_last
    assert resolve_runtime(TrialConfig(), "cuda", cores=4, bf16=False, env_visible=None).amp == (
        "float16"
    )


def test_explicit_values_win():
    cfg = with_overrides(
        TrialConfig(),
        {
            "data.num_workers": 2,
            "data.pin_memory": False,
            "data.persistent_workers": False,
            "train.deterministic": True,
            "train.amp": False,
            "train.compile": True,
        },
    )
    rt = resolve_runtime(cfg, "cuda:0", cores=16, bf16=True, env_visible=None)
    assert (rt.num_workers, rt.pin_memory, rt.persistent_workers) == (2, False, False)
    assert (rt.deterministic, rt.cudnn_benchmark, rt.amp, rt.compile) == (True, False, None, True)
    cpu = resolve_runtime(cfg, "cpu", cores=16, bf16=False, env_visible=None)
    assert cpu.num_workers == 2 and cpu.persistent_workers is False


@pytest.mark.parametrize(
    ("device", "cores", "want"), [("cpu", 64, 0), ("cuda", 1, 1), ("cuda", 6, 6), ("cuda", 64, 8)]
)
def test_auto_num_workers(device, cores, want):
    assert auto_num_workers(device, cores) == want


@pytest.mark.parametrize(
    ("device", "env", "want"),
    [
        ("cpu", "3", "cpu"),
        ("cuda:0", None, "cuda:0"),
        ("cuda:1", "", "cuda:1"),
        ("cuda:0", "2", "cuda:2"),
        ("cuda:1", "4,5", "cuda:5"),
        ("cuda:0", "GPU-abc", "GPU-abc"),
    ],
)
def test_physical_device(device, env, want):
    assert physical_device(device, env) == want


def test_yaml_keys_accepted_and_checked():
    cfg = config_from_dict(
        {
            "data": {"num_workers": None, "pin_memory": True, "persistent_workers": None},
            "train": {"deterministic": False, "compile": True},
        }
    )
    assert cfg.data.num_workers is None and cfg.data.pin_memory is True
    assert cfg.train.deterministic is False and cfg.train.compile is True
    with pytest.raises(ConfigError, match=r"data.persistent_workers=True: needs data.num_workers"):
        config_from_dict({"data": {"num_workers": 0, "persistent_workers": True}})
    with pytest.raises(ConfigError, match=r"train.compile=1: must be true or false"):
        config_from_dict({"train": {"compile": 1}})


def test_compile_error_is_one_line():
    from torch._dynamo.exc import BackendCompilerFailed

    exc = BackendCompilerFailed.__new__(BackendCompilerFailed)
    Exception.__init__(exc, "backend='inductor' raised:\nCppCompileError: no compiler\n...")
    err = compile_error(exc)
    assert err is not None and "\n" not in str(err)
    assert str(err).startswith("train.compile=true: torch.compile failed (BackendCompilerFailed")
    assert compile_error(ValueError("x")) is None


@pytest.mark.slow
def test_compile_builds_and_runs_one_step_on_the_cpu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    rt = resolve_runtime(
        with_overrides(TrialConfig(), {"train.compile": True}),
        "cpu",
        cores=1,
        bf16=False,
        env_visible=None,
    )
    net = compiled(model, rt)
    assert net is not model
    assert (
        compiled(
            model, resolve_runtime(TrialConfig(), "cpu", cores=1, bf16=False, env_visible=None)
        )
        is model
    )
    try:
        out = net(torch.randn(2, 3, 8, 8))
    except Exception as exc:  # a missing toolchain is reported, never hidden
        err = compile_error(exc)
        pytest.fail(str(err) if err is not None else f"{type(exc).__name__}: {exc}")
    out.sum().backward()
    assert out.shape == (2, 2, 8, 8)
    assert model[0].weight.grad is not None  # the plain model's parameters are the trained ones


@pytest.mark.slow
def test_tiny_cpu_trial_records_its_runtime(tiny_cfg):
    from harness.fit import fit

    result = fit(tiny_cfg)
    summary = json.loads((tiny_cfg.run_dir / "summary.json").read_text())
    assert summary["runtime"] == result.summary["runtime"]
    assert summary["runtime"] == {
        "device": "cpu",
        "torch_device": "cpu",
        "cuda_visible_devices": None,
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
        "deterministic": True,
        "cudnn_benchmark": False,
        "amp": None,
        "channels_last": False,
        "compile": False,
    }
