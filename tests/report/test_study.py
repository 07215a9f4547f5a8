"""harness report: a self-contained HTML page of a study that renders offline without errors."""

import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

from harness.cli import main
from harness.config import load_config
from harness.config.sweep import parse_spec
from harness.sweep import best_trial, create_study, run_sweep, storage_url, trials_of

# Fixed parameters per trial (enqueued), so the flagged trial and the BN groups are known.
# Trial 2 carries the story's bug: the audit flags it (the FCN and decoder are in no group).
PLANNED = [
    {"lr": 3e-3, "fcn_bn": True, "decoder_bn": True, "inject_bug": None},
    {"lr": 1e-2, "fcn_bn": False, "decoder_bn": True, "inject_bug": None},
    {"lr": 3e-3, "fcn_bn": True, "decoder_bn": True, "inject_bug": "encoder-only-optimizer"},
    {"lr": 1e-3, "fcn_bn": True, "decoder_bn": False, "inject_bug": None},
]
BUGGY = 2


def _spec(tiny_data, root: Path):
    return parse_spec(
        {
            "study": "rep",
            "n_trials": len(PLANNED),
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
            "space": {
                "lr": {"low": 1e-3, "high": 1e-2, "log": True},
                "fcn_bn": {"choices": [True, False]},
                "decoder_bn": {"choices": [True, False]},
                "inject_bug": {"choices": [None, "encoder-only-optimizer"]},
            },
            "trial": {
                "out_dir": str(root / "runs"),
                "data": {
                    "root": str(tiny_data),
                    "image_size": 64,
                    "cache_dir": str(root / "cache"),
                },
                "model": {"width": 0.125, "fc_channels": 32, "fc_kernel": 2},
                "train": {"epochs": 2, "batch_size": 8},
                "tracking": {"backend": "none", "media_images": 3},
            },
        }
    )


@pytest.fixture(scope="module")
def study(tiny_data, tmp_path_factory):
    """A 4-trial, 2-epoch study with one flagged trial, and its report built by the CLI."""
    root = tmp_path_factory.mktemp("report")
    spec = _spec(tiny_data, root)
    study = create_study(spec, storage_url(spec))
    for params in PLANNED:
        study.enqueue_trial(params)
    run_sweep(spec)
    trials = trials_of(study)
    best = best_trial(trials)
    assert best is not None and best.number != BUGGY
    return {"root": root, "out": root / "runs", "trials": trials, "best": best}


@pytest.fixture(scope="module")
def report(study):
    rc = main(["report", "rep", "--out", str(study["out"])])
    assert rc == 0
    path = study["out"] / "rep" / "report" / "report.html"
    return path, path.read_text()


def _render(path: Path) -> str:
    """The DOM chromium builds from the page: the inline check writes body[data-render]."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is missing: bash scripts/install-test-deps.sh (make test runs it)"
    proc = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_report_is_self_contained(report):
    path, page = report
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", page)
    assert len(srcs) == 7  # every chart drew: history ... masks
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # no resource from elsewhere: no links, external scripts, stylesheets, fonts or url()
    assert not re.search(r"(?:src|href)=[\"'](?!data:)", page)
    assert not re.search(r"https?://|file:|url\(|@import|<link", page)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == sorted(
        [
            "best_masks.png",
            "bn_switches.png",
            "history.png",
            "learning_curves.png",
            "parallel_coordinates.png",
            "param_importances.png",
            "per_class_iou.png",
        ]
    )


@pytest.mark.slow
def test_report_has_every_section_and_the_facts(study, report, capsys):
    _, page = report
    for key in ("history", "parallel", "importance", "bn", "curves", "flags", "per-class", "masks"):
        assert f'<section id="{key}">' in page
    best = study["best"]
    assert f"Best trial: <b>#{best.number}</b>" in page
    assert f"harness trial --config {study['out'] / 'rep' / 'best.yaml'}" in page
    n = len(PLANNED)
    assert f"{n} trials: {n} complete; 1 flagged." in page
    # the flag table names the buggy trial, its flags and the audit's words
    table = page.split('<table id="flag-table">', 1)[1].split("</table>", 1)[0]
    assert f'<tr class="flagged"><td>{BUGGY}</td>' in table
    assert "audit:missing:decoder" in table and "inject_bug=encoder-only-optimizer" in table
    assert re.search(r"decoder: 0 of [\d.]+k? trainable parameters in any optimiser group", table)
    # per-class IoU names the dataset's classes (read from the best trial's own config)
    cfg = load_config(Path(best.user_attrs["run_dir"]) / "config.yaml")
    from harness.data.loaders import load_data

    names = load_data(cfg).class_names
    per_class = page.split('<section id="per-class">', 1)[1].split("</section>", 1)[0]
    assert all(f"<td>{n}</td>" in per_class for n in names)
    masks = page.split('<section id="masks">', 1)[1].split("</section>", 1)[0]
    assert "image | ground truth | prediction" in masks and "<img" in masks


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(report):
    path, _ = report
    dom = _render(path)
    state = re.search(r'<body[^>]*data-render="([^"]*)"', dom)
    assert state is not None, dom[:500]
    assert state.group(1) == "ok"


@pytest.mark.slow
def test_the_render_check_catches_a_broken_image(report, tmp_path):
    """The check is not vacuous: an image that does not decode turns data-render into an error."""
    _, page = report
    broken = tmp_path / "broken.html"
    broken.write_text(
        re.sub(r"data:image/png;base64,[^\"]*", "data:image/png;base64,AAAA", page, count=1)
    )
    state = re.search(r'<body[^>]*data-render="([^"]*)"', _render(broken))
    assert state is not None and state.group(1).startswith("error: cannot load img")
    assert "optimisation history" in state.group(1)  # the first image, the one broken


@pytest.mark.slow
def test_unknown_study_is_one_line_exit_2(study, capsys):
    rc = main(["report", "nope", "--out", str(study["out"])])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "study nope" in err


@pytest.mark.slow
def test_missing_checkpoint_and_run_folder_are_sentences(study, capsys):
    """best.pt deleted (checkpointing off) and another trial's run folder gone: still a report."""
    best_dir = Path(study["best"].user_attrs["run_dir"])
    other = next(t for t in study["trials"] if t.number not in (study["best"].number, BUGGY))
    other_dir = Path(other.user_attrs["run_dir"])
    ckpt, moved = best_dir / "best.pt", other_dir.with_name("moved-away")
    ckpt.rename(ckpt.with_suffix(".bak"))
    other_dir.rename(moved)
    try:
        dest = study["root"] / "partial"
        rc = main(["report", "rep", "--out", str(study["out"]), "--dest", str(dest)])
        assert rc == 0 and str(dest / "report.html") in capsys.readouterr().out
        page = (dest / "report.html").read_text()
    finally:
        ckpt.with_suffix(".bak").rename(ckpt)
        moved.rename(other_dir)
    assert f"Trial {study['best'].number} has no best.pt" in page
    assert f"No metrics.jsonl (run folder deleted or moved) for trial(s) #{other.number}" in page
    assert not (dest / "best_masks.png").exists()
    assert "data-render" in page


@pytest.mark.slow
def test_study_without_a_best_trial(tmp_path):
    """Only a failed and a pruned trial: every section says what is missing, nothing crashes."""
    url = f"sqlite:///{tmp_path / 'empty' / 'study.db'}"
    (tmp_path / "empty").mkdir()
    s = optuna.create_study(study_name="empty", storage=url, direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for number, state in enumerate((optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)):
        s.add_trial(
            optuna.trial.create_trial(
                state=state,
                params={"lr": 1e-3 * (number + 1)},
                distributions=dist,
                user_attrs={"best_miou": 0.1 if number else None, "flags": []},
                intermediate_values={1: 0.1} if number else {},
            )
        )
    rc = main(["report", "empty", "--out", str(tmp_path)])
    assert rc == 0
    page = (tmp_path / "empty" / "report" / "report.html").read_text()
    assert "No best trial yet" in page
    assert "Parameter importances need at least 3 complete trials" in page
    assert "No BatchNorm switch" in page
