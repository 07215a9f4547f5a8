import json
import subprocess
import sys

import pytest
import yaml

from harness.cli import main


def _trial_args(tiny_data, tmp_path, *extra):
    return [
        "trial",
        "--data", str(tiny_data),
        "--out", str(tmp_path / "runs"),
        "--image-size", "64",
        "--width", "0.125",
        "--fc-channels", "32",
        "--fc-kernel", "2",
        "--batch-size", "8",
        "--epochs", "1",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_trial_end_to_end_on_a_tiny_synthetic_set(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default mask cache (runs/cache) lands in tmp_path
    rc = main(_trial_args(tiny_data, tmp_path, "--name", "e2e", "--lr", "2e-3", "--f-lr", "1e-3",
                          "--no-fcn-bn"))  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "param-group audit: ok" in out
    assert "epoch   1/1" in out and "val/mIoU" in out
    run = tmp_path / "runs" / "e2e"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["optim"]["lr"] == 2e-3 and cfg["optim"]["f_lr"] == 1e-3
    assert cfg["model"]["fcn_bn"] is False and cfg["model"]["encoder_bn"] is True
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 1
    # the recorded config reproduces the run through --config
    rc = main(["trial", "--config", str(run / "config.yaml"), "--name", "again", "-q"])
    assert rc == 0
    again = json.loads((tmp_path / "runs" / "again" / "summary.json").read_text())
    assert again["best_val_mIoU"] == summary["best_val_mIoU"]
    # the file's own name counts (defaults < --config FILE < options): the recorded run is
    # there already, and the one-line refusal says so; a file without a name gets a timestamp
    capsys.readouterr()
    assert main(["trial", "--config", str(run / "config.yaml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "e2e" in err
    unnamed = {k: v for k, v in cfg.items() if k != "name"}
    (tmp_path / "unnamed.yaml").write_text(yaml.safe_dump(unnamed))
    assert main(["trial", "--config", str(tmp_path / "unnamed.yaml"), "-q"]) == 0
    assert len(list((tmp_path / "runs").glob("trial-*"))) == 1


@pytest.mark.slow
def test_injected_bug_warns_loudly(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(_trial_args(tiny_data, tmp_path, "--inject-bug", "encoder-only-optimizer"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "WARNING param-group audit: decoder: 0 of" in out
    assert "flags: audit:missing:fcn, audit:missing:decoder, audit:missing:head" in out
    rc = main(_trial_args(tiny_data, tmp_path, "--inject-bug", "encoder-only-optimizer",
                          "--strict", "--name", "strict"))  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --strict: param-group audit found 3 problem(s)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trial", "--lr", "0"], "error: optim.lr=0.0: must be > 0"),
        (["trial", "--f-lr", "-1e-5"], "error: optim.f_lr=-1e-05: must be >= 0"),
        (["trial", "--epochs", "0"], "error: train.epochs=0: must be >= 1"),
        (["trial", "--overlap", "union"], "error: data.overlap='union': must be one of"),
        (["trial", "--image-size", "64"], "error: data.image_size=64: five pools leave 2x2"),
        (
            ["trial", "--model", "unet"],
            "error: model.name='unet': must be one of deconvnet, deeplab",
        ),
        (
            ["trial", "--model", "deeplabv1", "--fc-kernel", "4"],
            "error: model.fc_kernel=4: must be odd for deeplabv1",
        ),
        (["trial", "--inject-bug", "nope"], "error: train.inject_bug='nope': must be one of"),
        (["trial", "--config", "missing.yaml"], "error: missing.yaml: cannot read config file"),
        (["trial", "--config", "latin1.yaml"], "error: latin1.yaml: a config file must be UTF-8"),
        (["trial", "--out", "afile"], "error: out_dir/name: afile/trial-"),
        (
            ["bench", "--only", "gpu", "--device", "cpu", "--out", "afile"],
            "error: --out afile: afile is a file, not a folder",
        ),
        (["dashboard", "s", "--port", "99999"], "error: --port=99999: must be 1-65535"),
        (["trial", "--cache-dir", "afile/c"], "error: data.cache_dir (--cache-dir) afile/c: afile"),
        (
            ["trial", "--config", "broken.yaml"],
            "error: broken.yaml: not valid YAML (ParserError at line 2, column 1: expected",
        ),
        (["trial", "--lr", "abc"], "error: Invalid value for '--lr'"),
        (["trial", "--bogus"], "error: No such option: --bogus"),
        (["synth", "--out", "x", "--n-train", "0"], "error: --n-train=0: must be >= 1"),
        (["trial", "--monitor-steps", "0"], "error: train.monitor_steps=0: must be >= 1"),
        (["trial", "--strict", "--no-audit"], "error: train.strict=True: needs train.audit"),
        (
            ["trial", "--no-monitor", "--stop-never-updated"],
            "error: train.stop_never_updated=True: needs train.monitor",
        ),
        (["bench", "--only", "d,x"], "error: --only: x is not a benchmark (choose from a, b, c,"),
        (["bench", "--only", ","], "error: --only: ',' is not a benchmark"),
        (["bench", "--only", "a", "--device", "cpu"], "error: --device: only for the GPU check"),
        (["bench", "--out", "x"], "error: --out: only for the GPU check (--only gpu)"),
        (["bench", "--only", "gpu", "--device", "tpu"], "error: --device 'tpu': must be cpu,"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "broken.yaml").write_text("optim: [1, 2\n")
    (tmp_path / "afile").write_text("")
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith(message), err
    assert out == ""  # not even the banner of a run folder that is never made
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("trial-*"))


def test_bad_data_folder_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.json").write_text("{not json")
    (data / "val.json").write_text("{}")
    assert main(["trial", "--data", str(data), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "train.json" in err and err.count("\n") == 1


@pytest.mark.slow
def test_console_script_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "trial", "--lr", "-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: optim.lr=-1.0: must be > 0"
    assert not (tmp_path / "runs").exists()


def test_help_shows_examples(capsys):
    assert main(["trial", "--help"]) == 0
    out = capsys.readouterr().out
    assert "harness trial --lr 1e-4 --f-lr 1e-5" in out
    assert "--encoder-bn" in out and "--no-encoder-bn" in out and "--inject-bug" in out


def test_synth_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--n-train", "3", "--n-val", "2", "--n-test", "1",
                 "--size", "64"]) == 0  # fmt: skip
    assert {"train.json", "val.json", "test.json"} <= {p.name for p in out.iterdir()}
    assert main(["synth", "--out", str(out)]) == 2  # not empty: refused, nothing overwritten
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_only_runs_the_named_benchmark(capsys):
    assert main(["bench", "--quick", "--only", "a"]) == 0
    out = capsys.readouterr().out
    assert "(a) mask cache" in out and "speed-up" in out
    assert "(b)" not in out and "(d)" not in out and "(eda)" not in out


def test_dashboard_on_a_port_in_use_is_one_line(tmp_path, capsys):
    import socket

    import optuna

    (tmp_path / "s").mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "s", "--out", str(tmp_path), "--port", str(port)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the server's own banner
    assert last.startswith(f"error: --port={port}: cannot serve on it (")
