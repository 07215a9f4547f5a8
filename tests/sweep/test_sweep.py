"""harness sweep: sweep files, resume, workers, PostgreSQL, crashes, best.yaml, dashboard."""

import contextlib
import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from harness.cli import main
from harness.config import load_config, with_overrides
from harness.config.sweep import load_spec, parse_spec
from harness.errors import ConfigError
from harness.fit import fit
from harness.secrets import mask_url
from harness.sweep import read_best, run_sweep, storage_url
from harness.sweep.storage import _driver_url

REPO = Path(__file__).resolve().parents[2]


def _sweep_doc(tiny_data, tmp_path, **top):
    doc = {
        "study": "s",
        "n_trials": 3,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        # the floor would stop most 1-epoch trials on this tiny set: tested on its own below
        "pruner": {
            "name": "median",
            "n_startup_trials": 1,
            "n_warmup_epochs": 0,
            "majority_floor": False,
        },
        "heartbeat": {"interval": 1, "grace_period": 3, "max_retry": 1},
        "space": {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "fcn_bn": {"choices": [True, False]},
        },
        "trial": {
            "out_dir": str(tmp_path / "runs"),
            "data": {
                "root": str(tiny_data),
                "image_size": 64,
                "cache_dir": str(tmp_path / "cache"),
            },
            "model": {"width": 0.125, "fc_channels": 32, "fc_kernel": 2},
            "train": {"epochs": 1, "batch_size": 8},
            "tracking": {"backend": "none"},
        },
    }
    doc.update(top)
    return doc


def _write(tmp_path, doc, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _trials(spec_or_url, study="s"):
    url = spec_or_url if isinstance(spec_or_url, str) else storage_url(spec_or_url)
    return optuna.load_study(study_name=study, storage=_driver_url(url)).get_trials()


def _states(trials):
    return sorted(t.state.name for t in trials)


# --- sweep file validation ------------------------------------------------------------------


def test_shipped_sweep_files_are_valid():
    default = load_spec(REPO / "sweeps" / "default.yaml")
    assert (
        default.study == "default"
        and default.sampler.name == "tpe"
        and default.pruner.name == "median"
    )
    assert {p.path for p in default.space} >= {
        "optim.lr",
        "optim.f_lr",
        "model.encoder_bn",
        "model.fcn_bn",
        "model.decoder_bn",
    }
    # the default study must fit in about 10 CPU minutes even unpruned (2.3-2.6 s per epoch,
    # validation included, measured on an idle 2-core box; 3.5 s leaves room for a slower one)
    assert default.n_trials * default.base.train.epochs * 3.5 <= 600
    paper = load_spec(REPO / "sweeps" / "trash-deconvnet.yaml")
    assert paper.base.model.width == 1.0 and paper.base.data.image_size == 512


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"sampler": {"name": "cmaes"}}, "sampler.name: 'cmaes': unknown sampler"),
        ({"pruner": {"name": "asha"}}, "pruner.name: 'asha': unknown pruner"),
        ({"pruner": {"majority_floor": "yes"}}, "pruner.majority_floor: 'yes' must be true or"),
        ({"space": {"lr": {"low": 1e-2, "high": 1e-4}}}, "space.lr: low=0.01 > high=0.0001"),
        ({"space": {"lr": {"low": 0, "high": 1e-2, "log": True}}}, "space.lr.low: 0: a log range"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "lo": 1}}}, "space.lr.lo: unknown key"),
        ({"space": {"nope": {"choices": [1]}}}, "space.nope: unknown trial option"),
        ({"space": {"fcn_bn": {"choices": ["x"]}}}, "space.fcn_bn.choices: model.fcn_bn='x'"),
        ({"trial": {"model": {"widht": 1}}}, "trial: model.widht: unknown key"),
        ({"n_trials": 0}, "n_trials: 0 must be an integer >= 1"),
        ({"sampler": {"name": "grid"}}, "space.lr: the grid sampler needs choices"),
        ({"heartbeat": {"interval": 5, "grace_period": 5}}, "heartbeat.grace_period: 5 must be"),
    ],
)
def test_sweep_file_errors_name_the_key_path(tiny_data, tmp_path, change, message):
    doc = _sweep_doc(tiny_data, tmp_path)
    doc.update(change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_spec(doc)


def test_sampler_seed_option_replaces_the_file_s_seed_and_is_recorded(tiny_data, tmp_path):
    from harness.config.sweep import with_options
    from harness.sweep.study import jsonable_spec

    spec = with_options(parse_spec(_sweep_doc(tiny_data, tmp_path)), sampler_seed=13)
    assert spec.sampler.seed == 13 and spec.sampler.n_startup_trials == 2
    assert jsonable_spec(spec)["sampler"] == {"name": "tpe", "seed": 13, "n_startup_trials": 2}
    # the options' other effects are recorded too, never the storage URL
    spec = with_options(
        spec, study="other", n_trials=5, storage="postgresql://me:pw@db/x",
        trial_overrides={"train.audit": False, "tracking.backend": "none"},
    )  # fmt: skip
    recorded = jsonable_spec(spec)
    assert recorded["study"] == "other" and "storage" not in recorded
    assert recorded["effective"] == {
        "n_trials": 5, "timeout": None, "audit": False, "monitor": True, "tracking": "none"
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"--sampler-seed: -1 must be an integer >= 0"):
        with_options(spec, sampler_seed=-1)


def test_cli_sampler_seed_error_is_one_line_exit_2(tiny_data, tmp_path, capsys):
    path = _write(tmp_path, _sweep_doc(tiny_data, tmp_path))
    rc = main(["sweep", str(path), "--sampler-seed", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--sampler-seed: -1 must be" in err
    assert not (tmp_path / "runs").exists()  # refused before any study was created


def test_cli_sweep_error_is_one_line_exit_2(tiny_data, tmp_path, capsys):
    doc = _sweep_doc(tiny_data, tmp_path, sampler={"name": "nope"})
    rc = main(["sweep", str(_write(tmp_path, doc))])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "sampler.name: 'nope'" in err


def test_mask_url_hides_passwords():
    assert mask_url("postgresql://me:s3cr%40t@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert mask_url("postgresql://me@db/x") == "postgresql://me@db/x"
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


# --- the study ------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_resume_best_yaml_and_reproduce(tiny_data, tmp_path, capsys):
    path = _write(tmp_path, _sweep_doc(tiny_data, tmp_path))
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    spec = load_spec(path)
    trials = _trials(spec)
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    assert "reproduce: harness trial --config" in out and "best.yaml" in out
    for t in trials:  # every trial has its run folder, named <study>-<number>
        run = Path(t.user_attrs["run_dir"])
        assert run.name == f"s-{t.number}"
        assert json.loads((run / "summary.json").read_text())["status"] in ("finished", "pruned")
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    for t in pruned:  # the rule that stopped it, in words
        assert t.user_attrs["reason"].startswith(f"epoch {t.last_step}: median rule: best ")
    # the median pruner's floor: every trial knows what predicting the majority class scores
    for t in trials:
        lines = (Path(t.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        record = [json.loads(line) for line in lines]
        assert t.user_attrs["majority_miou"] == record[0]["val/majority_mIoU"] > 0
        # and the study-level detector its val loss against the no-learning loss
        assert t.user_attrs["val_loss"] == [r["val/loss"] for r in record]
        assert t.user_attrs["prior_loss"] == record[-1]["val/prior_loss"] > 0

    # resume: --n-trials is the total, earlier trials are kept
    assert main(["sweep", str(path), "--n-trials", "4", "--quiet"]) == 0
    resumed = _trials(spec)
    assert len(resumed) == 4
    assert [t.params for t in resumed[:3]] == [t.params for t in trials]
    # nothing more to do: the same command is a no-op
    assert main(["sweep", str(path), "--n-trials", "4", "--quiet"]) == 0
    assert len(_trials(spec)) == 4
    capsys.readouterr()

    # best.yaml: the best finished unflagged trial; harness trial --config reproduces its mIoU
    best_path = spec.study_dir / "best.yaml"
    raw, header = read_best(best_path)
    complete = [t for t in resumed if t.state.name == "COMPLETE"]
    top = max(complete, key=lambda t: t.value)
    assert int(header["trial"]) == top.number
    assert float(header["val_mIoU"]) == pytest.approx(top.value)
    assert raw["optim"]["lr"] == pytest.approx(top.params["lr"])
    cfg = with_overrides(load_config(best_path), {"name": "again"})
    again = fit(cfg)
    assert again.best_miou == pytest.approx(top.value, abs=1e-6)
    assert not list(best_path.parent.glob(".best.yaml.*"))  # atomic: no temp file left

    assert main(["best", "s", "--out", str(tmp_path / "runs"), "--all"]) == 0
    out = capsys.readouterr().out
    assert f"harness trial --config {best_path}" in out and "state" in out

    # a study kept elsewhere: --storage says which trial is best, from the study itself
    url = storage_url(spec)
    assert main(["best", "s", "--out", str(tmp_path / "elsewhere"), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert f"# trial: {top.number}" in out and f"(from {url}) reproduce:" in out
    assert not (tmp_path / "elsewhere").exists()  # read, never written


@pytest.mark.slow
def test_flagged_trials_never_become_best(tiny_data, tmp_path):
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=2)
    doc["space"] = {"inject_bug": {"choices": ["encoder-only-optimizer"]}}
    doc["sampler"] = {"name": "grid"}
    doc["n_trials"] = 1
    spec = parse_spec(doc)
    run_sweep(spec)
    (trial,) = _trials(spec)
    assert trial.state.name == "COMPLETE" and "audit:missing:decoder" in trial.user_attrs["flags"]
    assert not (spec.study_dir / "best.yaml").exists()


@pytest.mark.filterwarnings("ignore:Fixed parameter lr:UserWarning")
@pytest.mark.slow
def test_failed_trial_is_recorded_with_reason_and_the_study_goes_on(tiny_data, tmp_path):
    from harness.sweep import create_study

    spec = parse_spec(_sweep_doc(tiny_data, tmp_path, n_trials=2))
    study = create_study(spec, storage_url(spec))
    # out of the search range on purpose: a NaN loss
    study.enqueue_trial({"lr": 1e30, "fcn_bn": True})
    run_sweep(spec)
    trials = _trials(spec)
    assert trials[0].state.name == "FAIL" and "loss is" in trials[0].user_attrs["reason"]
    assert "nan-loss" in trials[0].user_attrs["flags"]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 2


@pytest.mark.slow
def test_two_workers_share_the_embedded_store(tiny_data, tmp_path, capsys):
    path = _write(tmp_path, _sweep_doc(tiny_data, tmp_path, n_trials=4))
    assert main(["sweep", str(path), "--workers", "2"]) == 0
    trials = _trials(load_spec(path))
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(done) <= 5  # two workers may both start the last slot
    assert len({t.number for t in trials}) == len(trials)
    assert "study.db" in capsys.readouterr().out


def _wandb_run_record(run_dir: Path) -> dict:
    (offline,) = run_dir.glob("wandb/offline-run-*")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(offline)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return next(r["run"] for r in map(json.loads, out.splitlines()) if r.get("type") == "run")


@pytest.mark.slow
def test_wandb_runs_grouped_by_study_and_a_study_run(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=1)
    doc["trial"]["tracking"] = {"backend": "wandb", "media_images": 0}
    spec = parse_spec(doc)
    run_sweep(spec)
    (trial,) = _trials(spec)
    assert "(offline)" in trial.user_attrs["wandb"]
    run = _wandb_run_record(Path(trial.user_attrs["run_dir"]))
    assert (run["run_group"], run["job_type"], run["display_name"]) == ("s", "trial", "s-0")
    study_run = _wandb_run_record(spec.study_dir)
    assert (study_run["run_group"], study_run["job_type"]) == ("s", "study")


@pytest.mark.slow
def test_a_trial_refused_by_a_setting_stops_the_sweep_and_the_fixed_file_runs(
    tiny_data, tmp_path, capsys
):
    """A bad fixed setting refuses every trial: the sweep stops at the first with the one-line
    error, and once the file is fixed the same command runs (earlier failures do not count)."""
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=2)
    doc["trial"]["model"]["weights_path"] = str(tmp_path / "missing.pt")
    path = _write(tmp_path, doc)
    assert main(["sweep", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "study s: trial 0 refused before training:" in err and "missing.pt" in err
    assert _states(_trials(load_spec(path))) == ["FAIL"]  # one trial, not five

    del doc["trial"]["model"]["weights_path"]
    path = _write(tmp_path, doc)
    assert main(["sweep", str(path), "-q"]) == 0
    assert _states(_trials(load_spec(path))).count("FAIL") == 1
    assert len([t for t in _trials(load_spec(path)) if t.state.name != "FAIL"]) == 2


@pytest.mark.parametrize("command", [["report"], ["best", "--all"]])
def test_readers_of_a_study_refuse_a_broken_or_missing_database_in_one_line(
    tmp_path, capsys, command
):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.db").write_text("garbage")
    assert main([*command[:1], "s", *command[1:], "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a usable database (file is not a database)" in err

    typo = tmp_path / "typo.db"
    args = [
        *command[:1],
        "s",
        *command[1:],
        "--out",
        str(tmp_path),
        "--storage",
        f"sqlite:///{typo}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no such file {typo}" in err
    assert not typo.exists()  # a reader never creates a database


def test_a_resumed_study_keeps_its_parameters(tiny_data, tmp_path, capsys):
    from harness.errors import HarnessError
    from harness.sweep import create_study

    doc = _sweep_doc(tiny_data, tmp_path)
    create_study(parse_spec(doc), storage_url(parse_spec(doc)))
    other = {**doc, "space": {"f_lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    with pytest.raises(
        HarnessError, match="was searched over fcn_bn, lr, this sweep file over f_lr"
    ):
        create_study(parse_spec(other), storage_url(parse_spec(other)))
    narrower = {**doc, "space": {**doc["space"], "lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    create_study(parse_spec(narrower), storage_url(parse_spec(narrower)))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "note: study s: space.lr was" in err and "mix both" in err


class _Study:
    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, key, value) -> None:
        self.user_attrs[key] = value


def test_a_study_run_that_fails_is_said_and_recorded_even_when_quiet(
    tiny_data, tmp_path, monkeypatch, capsys
):
    import wandb

    from harness.sweep import wandb_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=1)
    doc["trial"]["tracking"] = {"backend": "wandb"}
    spec = parse_spec(doc)

    def refuse(**_):
        raise RuntimeError("no room left on the W&B disk")

    monkeypatch.setattr(wandb, "init", refuse)
    study = _Study()
    error = wandb_run.record_study_run(study, spec, [], say=None)  # a quiet sweep: no console
    assert error == "W&B study run not logged (RuntimeError: no room left on the W&B disk)"
    assert capsys.readouterr().err == error + "\n"
    assert study.user_attrs[wandb_run.WANDB_ERROR] == error

    # a later run that logs it clears the stale reason
    monkeypatch.setattr(wandb_run, "log_study_run", lambda spec, trials: None)
    assert wandb_run.record_study_run(study, spec, [], say=None) is None
    assert study.user_attrs[wandb_run.WANDB_ERROR] is None


# --- PostgreSQL -----------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster; yields a URL with a password (trust auth ignores it)."""
    bindir = _pg_bin()
    if bindir is None:
        # no skip: the PostgreSQL storage must be tested; scripts/install-test-deps.sh installs it
        pytest.fail("PostgreSQL server missing: run bash scripts/install-test-deps.sh")
    root = Path(tempfile.mkdtemp(prefix="harness-pg-", dir="/tmp"))
    as_pg: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_pg, *cmd], check=True, capture_output=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o", opts, "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "h")
        yield f"postgresql://postgres:hunter2@127.0.0.1:{port}/h"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_postgres_two_workers_one_study_password_masked(tiny_data, tmp_path, postgres, capsys):
    path = _write(tmp_path, _sweep_doc(tiny_data, tmp_path, n_trials=3))
    assert main(["sweep", str(path), "--storage", postgres, "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "hunter2" not in captured.out + captured.err
    assert "postgres:***@" in captured.out
    trials = _trials(postgres)
    assert 3 <= sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) <= 4
    assert not (tmp_path / "runs" / "s" / "study.db").exists()  # the URL was used, not SQLite
    # a second command joins the same study and extends it
    assert main(["sweep", str(path), "--storage", postgres, "--n-trials", "5", "-q"]) == 0
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in _trials(postgres)) >= 5


# --- crashes --------------------------------------------------------------------------------


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored
    # signal stays ignored across exec; the sweep must see Ctrl-C however pytest was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_sweep(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "sweep", str(path), "--quiet", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _wait_running(spec, proc, timeout=180.0):
    """Until a trial is mid-training: RUNNING with at least its first epoch behind it."""
    deadline = time.monotonic() + timeout
    db = spec.study_dir / "study.db"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            with contextlib.suppress(Exception):
                for t in _trials(spec):
                    if t.state.name == "RUNNING" and t.intermediate_values:
                        return t
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("no trial started")


@pytest.mark.slow
def test_sigkill_then_resume_retries_the_stale_trial(tiny_data, tmp_path):
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=1)
    # long enough that the victim cannot finish between the poll and the kill on a fast machine
    doc["trial"]["train"]["epochs"] = 500
    doc["pruner"] = {"name": "none"}
    path = _write(tmp_path, doc)
    proc = _start_sweep(path)
    victim = _wait_running(load_spec(path), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    doc["trial"]["train"]["epochs"] = 3  # the retry only needs to finish
    spec = load_spec(_write(tmp_path, doc))
    time.sleep(spec.heartbeat.grace_period + 1)  # let the heartbeat go stale
    run_sweep(spec)
    trials = _trials(spec)
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retries and retries[0].params == victim.params
    assert retries[0].state.name == "COMPLETE"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 1
    assert (spec.study_dir / "best.yaml").exists()


@pytest.mark.slow
def test_sigint_marks_the_running_trial_failed_and_exits_130(tiny_data, tmp_path):
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=1)
    doc["trial"]["train"]["epochs"] = 50
    doc["pruner"] = {"name": "none"}
    path = _write(tmp_path, doc)
    spec = load_spec(path)
    proc = _start_sweep(path)
    victim = _wait_running(spec, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err
    (trial,) = _trials(spec)
    assert trial.number == victim.number and trial.state.name == "FAIL"
    assert trial.user_attrs["reason"].startswith("interrupted")
    summary = json.loads((Path(trial.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == "interrupted"


@pytest.mark.slow
def test_sigint_with_two_workers_fails_both_running_trials_and_exits_130(tiny_data, tmp_path):
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=2)
    doc["trial"]["train"]["epochs"] = 500
    doc["pruner"] = {"name": "none"}
    path = _write(tmp_path, doc)
    spec = load_spec(path)
    proc = _start_sweep(path, "--workers", "2")
    deadline = time.monotonic() + 180
    running: list = []
    while len(running) < 2:
        assert time.monotonic() < deadline, "two trials never ran at once"
        assert proc.poll() is None, proc.communicate()
        with contextlib.suppress(Exception):
            running = [
                t for t in _trials(spec) if t.state.name == "RUNNING" and t.intermediate_values
            ]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # to the parent alone: it must pass it on to its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    trials = _trials(spec)
    assert len(trials) == 2 and all(t.state.name == "FAIL" for t in trials)
    assert all(t.user_attrs["reason"].startswith("interrupted") for t in trials)


@pytest.mark.slow
def test_the_majority_floor_prunes_only_trials_that_learned_nothing(tiny_data, tmp_path):
    # the median rule cannot act here (5 start-up trials of 3): only the floor prunes
    pruner = {"name": "median", "n_startup_trials": 5, "n_warmup_epochs": 1}
    doc = _sweep_doc(tiny_data, tmp_path, n_trials=3, pruner=pruner)
    doc["trial"]["train"]["epochs"] = 2
    spec = parse_spec(doc)
    assert spec.pruner.majority_floor  # on unless switched off
    run_sweep(spec)
    trials = _trials(spec)
    assert len(trials) == 3
    for t in trials:
        majority = t.user_attrs["majority_miou"]
        best = max(t.intermediate_values.values())
        if t.state.name == "PRUNED":
            reason = t.user_attrs["reason"]
            assert reason.startswith("epoch 1: majority floor: best "), reason
            assert best <= majority + 1e-3 and t.user_attrs["epochs_run"] == 1
        else:
            assert t.intermediate_values[1] > majority + 1e-3


# --- benchmark and dashboard ---


@pytest.mark.parametrize("floor", [False, True])
@pytest.mark.slow
def test_pruning_benchmark_runs_both_studies(tiny_data, tmp_path, floor):
    from harness.bench.run import bench_pruning

    doc = _sweep_doc(tiny_data, tmp_path, n_trials=2)
    doc["pruner"]["majority_floor"] = floor
    doc["trial"]["train"]["epochs"] = 2
    result = bench_pruning(_write(tmp_path, doc), tmp_path / "bench")
    assert set(result) == {"none", "median", "replay", "replay_optuna"}
    assert result["none"]["epochs"] == 4 and result["none"]["pruned"] == 0
    # the median rule replayed on the first study's curves predicts the pruned study exactly
    assert result["replay"]["epochs"] == result["median"]["epochs"]
    replay, measured = result["replay"]["best"], result["median"]["best"]
    assert replay == pytest.approx(measured) or (math.isnan(replay) and math.isnan(measured))
    assert result["median"]["epochs"] <= 4 and result["median"]["trials"] == 2
    assert result["none"]["best"] > 0
    # the pruned study ran the very configurations the first one sampled, in the same order
    import optuna

    def params(study):
        url = f"sqlite:///{tmp_path / 'bench' / study / 'study.db'}"
        return [t.params for t in optuna.load_study(study_name=study, storage=url).trials]

    assert params("bench-median") == params("bench-none")
    assert len(params("bench-none")) == 2


# --- dashboard ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_dashboard_serves_the_study(tiny_data, tmp_path):
    pytest.importorskip("optuna_dashboard")
    doc = _sweep_doc(tiny_data, tmp_path)
    spec = parse_spec(doc)
    from harness.sweep import create_study

    create_study(spec, storage_url(spec))
    port = _free_port()
    cmd = [sys.executable, "-m", "harness.cli", "dashboard", "s", "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert any(s["study_name"] == "s" for s in body["study_summaries"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
