"""User model factories and optimiser builders (model.name / optim.builder as import paths):
they train, are audited and monitored like the built-in ones, are recorded with a hash of their
source, and every bad input is one line on stderr, exit code 2 and no run folder."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap

import pytest
import yaml

from harness.cli import main
from harness.config import TrialConfig, config_from_dict
from harness.config.sweep import parse_spec
from harness.errors import ConfigError
from harness.plugins import load_attr, source_hash

NETS = """
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, width, upsample=True):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.fcn = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.decoder = nn.Conv2d(width, num_classes, 1)
        self.upsample = upsample

    def forward(self, x):
        y = self.decoder(self.fcn(self.encoder(x)))
        if self.upsample:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


class TwoPart(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return self.head(torch.relu(self.backbone(x)))


def make(num_classes, width=4):
    return Net(num_classes, width)


def two_part(num_classes):
    return TwoPart(num_classes)


def bad_classes(num_classes):
    return Net(num_classes + 1, 4)


def half_size(num_classes):
    return Net(num_classes, 4, upsample=False)


def not_module(num_classes):
    return "net"


def raises(num_classes, width=4):
    raise ValueError("width must be even")


def exits(num_classes):
    import sys

    sys.exit(3)
"""

OPT = """
import torch
from torch import nn


def story(model, lr, f_lr, **_):
    # the story's line: a lower lr for the encoder ... and nothing else
    return torch.optim.Adam([{"params": model.encoder.parameters(), "lr": f_lr}], lr=lr)


def foreign(model, lr):
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)


def not_opt(model):
    return 3


def raises(model, lr):
    raise RuntimeError("no such group")
"""


@pytest.fixture
def userpkg(tmp_path, monkeypatch):
    """``mypkg`` (nets, opt, broken) in tmp_path, the current directory, as a user's would be."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    (pkg / "opt.py").write_text(textwrap.dedent(OPT))
    (pkg / "broken.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)

    def forget() -> None:  # another test's mypkg lives in another tmp_path
        for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
            del sys.modules[name]

    forget()
    yield pkg
    forget()


def _args(tiny_data, tmp_path, name, *extra):
    return [
        "trial", "-q", "--name", name,
        "--data", str(tiny_data),
        "--out", str(tmp_path / "runs"),
        "--image-size", "64",
        "--batch-size", "8",
        "--epochs", "1",
        "--tracking", "none",
        *extra,
    ]  # fmt: skip


def test_user_model_with_the_story_builder_is_audited_monitored_and_recorded(
    tiny_data, tmp_path, userpkg, capsys
):
    args = _args(tiny_data, tmp_path, "story", "--model", "mypkg.nets:make",
                 "--model-arg", "width=4", "--optimizer", "mypkg.opt:story")  # fmt: skip
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    run = tmp_path / "runs" / "story"
    summary = json.loads((run / "summary.json").read_text())
    flags = summary["flags"]
    for flag in ("audit:missing:fcn", "audit:missing:decoder"):
        assert flag in flags
    assert "never-updated:fcn" in flags and "never-updated:decoder" in flags
    assert "audit:missing:encoder" not in flags and "never-updated:encoder" not in flags
    # the audit table is the user model's own top-level children
    audit = json.loads((run / "audit.json").read_text())
    assert [row["module"] for row in audit["modules"]] == ["encoder", "fcn", "decoder"]
    # the record keeps the import path, the args and the hash of the source file
    sha = hashlib.sha256((userpkg / "nets.py").read_bytes()).hexdigest()
    code = summary["code"]
    assert code["model"]["path"] == "mypkg.nets:make" and code["model"]["args"] == {"width": 4}
    assert code["model"]["sha256"] == sha
    assert code["optimizer"]["path"] == "mypkg.opt:story"
    assert code["optimizer"]["sha256"] == source_hash(load_attr("mypkg.opt:story", "x"))
    assert json.loads((run / "dataset.json").read_text())["code"] == code
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "mypkg.nets:make" and cfg["model"]["args"] == {"width": 4}
    assert cfg["optim"]["builder"] == "mypkg.opt:story"
    assert config_from_dict(cfg).model.args == {"width": 4}


def test_predict_imports_a_checkpoints_user_model_only_when_the_user_names_it(
    tiny_data, tmp_path, userpkg, capsys
):
    """A checkpoint's config names its model factory: a shared best.pt must not make harness
    import a module of its choosing. ``harness predict`` runs it only with ``--model``."""
    assert main(_args(tiny_data, tmp_path, "u", "--model", "mypkg.nets:make")) == 0
    run = tmp_path / "runs" / "u"
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]
    capsys.readouterr()
    assert main(["predict", str(run), "--split", "val", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --model mypkg.nets:make" in err
    assert "mypkg.nets" not in sys.modules  # refused before anything was imported
    assert not (run / "predict-val").exists()

    assert main(["predict", str(run), "--split", "val", "-q", "--model", "mypkg.nets:other"]) == 2
    err = capsys.readouterr().err
    assert "--model='mypkg.nets:other'" in err and "trained with 'mypkg.nets:make'" in err

    assert main(["predict", str(run), "--split", "val", "-q", "--model", "mypkg.nets:make"]) == 0
    assert (run / "predict-val" / "submission.csv").is_file()


def test_the_report_predicts_a_user_models_masks_only_when_the_user_names_it(
    tiny_data, tmp_path, userpkg
):
    from harness.report.masks import MaskSet, predict_best_masks
    from harness.report.trials import TrialInfo

    assert main(_args(tiny_data, tmp_path, "u", "--model", "mypkg.nets:make")) == 0
    run = tmp_path / "runs" / "u"
    config = yaml.safe_load((run / "config.yaml").read_text())
    info = TrialInfo(0, "COMPLETE", {}, 0.1, [], {}, run, config)
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]
    said = predict_best_masks(info)
    assert isinstance(said, str) and "--model mypkg.nets:make predicts its masks" in said
    assert "mypkg.nets" not in sys.modules
    assert isinstance(predict_best_masks(info, "mypkg.nets:make"), MaskSet)


def test_f_lr_modules_names_the_user_models_modules(tiny_data, tmp_path, userpkg, capsys):
    # the default (encoder) on a model without one: refused, its children named; then fixed
    args = _args(tiny_data, tmp_path, "two", "--model", "mypkg.nets:two_part", "--f-lr", "1e-4")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: optim.f_lr_modules=['encoder']: the model has no module 'encoder' "
        "(its top-level children: backbone, head)"
    )
    assert not (tmp_path / "runs" / "two").exists()
    assert main([*args, "--f-lr-modules", "backbone"]) == 0
    audit = json.loads((tmp_path / "runs" / "two" / "audit.json").read_text())
    lrs = {row["module"]: row["lrs"] for row in audit["modules"]}
    assert lrs == {"backbone": [1e-4], "head": [3e-3]} and audit["ok"]


BAD_INPUTS = [
    (["--model", "mypkg.nope:make"], "module 'mypkg.nope' not found"),
    (["--model", "nopkg.nets:make"], "module 'nopkg' not found"),
    (["--model", "mypkg.nets:nope"], "module 'mypkg.nets' has no attribute 'nope'"),
    (["--model", "mypkg.broken:make"],
     "importing module 'mypkg.broken' failed: ZeroDivisionError: division by zero"),
    (["--model", "nets.make"], "model.name='nets.make': must be one of deconvnet, deeplabv1 or"),
    (["--model", "mypkg.nets:raises"],
     "model.name='mypkg.nets:raises': the factory raised ValueError: width must be even"),
    (["--model", "mypkg.nets:exits"],
     "model.name='mypkg.nets:exits': the factory raised SystemExit: 3"),
    (["--model", "mypkg.nets:not_module"], "the factory returned str, not an nn.Module"),
    (["--model", "mypkg.nets:bad_classes"],
     "forward gave logits [8, 10, 64, 64] for a batch [8, 3, 64, 64]; expected [8, 9, 64, 64]"),
    (["--model", "mypkg.nets:half_size"], "forward gave logits [8, 9, 32, 32]"),
    (["--model", "mypkg.nets:make", "--model-arg", "depth=3"],
     "model.args: depth not accepted by mypkg.nets:make (it accepts: width)"),
    (["--model-arg", "width=4"], "model.args={'width': 4}: only for a user factory"),
    (["--model", "mypkg.nets:make", "--model-arg", "width"], "--model-arg 'width': must be"),
    (["--model", "mypkg.nets:make", "--optimizer", "mypkg.opt:not_opt"],
     "optim.builder='mypkg.opt:not_opt': returned int, not a torch.optim.Optimizer"),
    (["--model", "mypkg.nets:make", "--optimizer", "mypkg.opt:foreign"],
     "none of the optimiser's 2 parameter tensors belong to the model"),
    (["--model", "mypkg.nets:make", "--optimizer", "mypkg.opt:raises"],
     "optim.builder='mypkg.opt:raises': the builder raised RuntimeError: no such group"),
    (["--optimizer", "mypkg.opt:story", "--inject-bug", "encoder-only-optimizer"],
     "train.inject_bug='encoder-only-optimizer': an injected optimiser bug replaces"),
    (["--model", "mypkg.nets:two_part", "--f-lr-modules", "", "--inject-bug", "frozen-decoder"],
     "train.inject_bug='frozen-decoder': the model has no module 'decoder'"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_user_code_is_one_line_exit_2_and_no_run_folder(
    tiny_data, tmp_path, userpkg, capsys, extra, message
):
    rc = main(_args(tiny_data, tmp_path, "bad", *extra))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs" / "bad").exists()


def test_verbose_shows_the_user_codes_traceback(tiny_data, tmp_path, userpkg, capsys):
    rc = main(_args(tiny_data, tmp_path, "bad", "--model", "mypkg.nets:raises", "--verbose"))
    err = capsys.readouterr().err
    assert rc == 2
    first, *rest = err.splitlines()
    assert first.startswith("error: model.name='mypkg.nets:raises': the factory raised")
    assert rest[0].startswith("Traceback") and 'nets.py", line' in err
    assert rest[-1] == "ValueError: width must be even"


def test_user_code_survives_yaml_round_trips_and_sweep_files(tmp_path):
    cfg = config_from_dict(
        {
            "model": {"name": "mypkg.nets:make", "args": {"width": 4, "act": "relu"}},
            "optim": {"builder": "mypkg.opt:story", "f_lr_modules": ["encoder", "fcn"]},
        }
    )
    assert cfg.optim.f_lr_modules == ("encoder", "fcn")
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and TrialConfig().model.args == {}
    spec = parse_spec(
        {
            "study": "mine",
            "n_trials": 2,
            "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
            "trial": {
                "model": {"name": "mypkg.nets:make", "args": {"width": 4}},
                "optim": {"builder": "mypkg.opt:story"},
            },
        }
    )
    assert spec.base.model.args == {"width": 4} and spec.base.optim.builder == "mypkg.opt:story"
    with pytest.raises(ConfigError, match=r"optim\.f_lr_modules='encoder': must be a list"):
        config_from_dict({"optim": {"f_lr_modules": "encoder"}})


def test_wandb_config_names_the_user_code(userpkg):
    from harness.tracking.wandb import run_config

    cfg = config_from_dict(
        {
            "model": {"name": "mypkg.nets:make", "args": {"width": 4}},
            "optim": {"builder": "mypkg.opt:story"},
        }
    )
    config = run_config(cfg, {}, [], 0)
    sha = hashlib.sha256((userpkg / "nets.py").read_bytes()).hexdigest()
    assert config["model_source"]["path"] == "mypkg.nets:make"
    assert (
        config["model_source"]["args"] == {"width": 4} and config["model_source"]["sha256"] == sha
    )
    assert config["optimizer_source"]["path"] == "mypkg.opt:story"
    assert "model_source" not in run_config(TrialConfig(), {}, [], 0)


def test_nproc_refuses_a_missing_factory_once_before_any_rank_starts(tmp_path, capsys):
    """Every rank would refuse it: the launcher says so once, and starts no rank."""
    rc = main(["trial", "--nproc", "2", "--model", "nopepkg.nets:make", "--epochs", "1",
               "--out", str(tmp_path / "runs"), "--name", "np", "--tracking", "none"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: model.name='nopepkg.nets:make': module 'nopepkg' not found")
    assert "starting 2 processes" not in out and not (tmp_path / "runs" / "np").exists()
