"""``harness predict``: a trained run's best.pt on a split without annotations (test) and with
(val); the CSV parses back to the PNGs at 256x256, the printed val mIoU is the run's."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.cli import main
from harness.config import TrialConfig, with_overrides
from harness.data.synth import generate
from harness.data.transforms import val_transforms
from harness.files import load_checkpoint
from harness.palette import class_palette
from harness.predict import (
    CSV_HEADER,
    SUBMISSION_SIZE,
    class_mismatch,
    load_run_checkpoint,
    read_submission,
)
from harness.predict.inputs import PredictError, build_checkpoint_model, resolve_data

SIZE = 80  # the images' own size; the model is trained at 64, so the logits are upsampled


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained run (1 epoch at 64x64) on a built-in-style set of 80x80 images."""
    base = tmp_path_factory.mktemp("predict")
    data = base / "data"
    generate(data, seed=0, n_train=16, n_val=6, n_test=3, size=SIZE)
    rc = main([
        "trial", "--data", str(data), "--out", str(base / "runs"), "--name", "r",
        "--cache-dir", str(base / "cache"), "--image-size", "64", "--width", "0.125",
        "--fc-channels", "32", "--fc-kernel", "2", "--batch-size", "8", "--epochs", "1",
        "--tracking", "none", "-q",
    ])  # fmt: skip
    assert rc == 0
    return base / "runs" / "r", data


def _images(data, split):
    return json.loads((data / f"{split}.json").read_text())["images"]


def _check_outputs(out, data, split, num_classes):
    """CSV rows in the annotation file's order, each the PNG resized nearest to 256x256; the
    PNGs palette images at the image's own size, pixel value = class index."""
    images = _images(data, split)
    header = (out / "submission.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == CSV_HEADER
    rows = read_submission(out / "submission.csv")
    assert list(rows) == [img["file_name"] for img in images]
    masks = {}
    for img in images:
        png = Image.open(out / "masks" / img["file_name"].replace(".jpg", ".png"))
        assert png.mode == "P" and png.size == (img["width"], img["height"])
        palette = np.array(png.getpalette()[: 3 * 256]).reshape(-1, 3)
        assert (palette == class_palette(num_classes)).all()
        mask = np.asarray(png)
        assert mask.max() < num_classes
        expected = cv2.resize(
            mask, (SUBMISSION_SIZE, SUBMISSION_SIZE), interpolation=cv2.INTER_NEAREST
        )
        assert rows[img["file_name"]].shape == (256, 256)
        assert (rows[img["file_name"]] == expected).all()
        masks[img["file_name"]] = mask
    return masks


@pytest.mark.slow
def test_predict_a_test_split_without_annotations(trained, capsys):
    run, data = trained
    before = sorted(p.name for p in run.iterdir())
    assert not json.loads((data / "test.json").read_text()).get("annotations")
    capsys.readouterr()
    rc = main(["predict", str(run), "--split", "test", "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "mIoU" not in out  # nothing to score against
    folder = run / "predict-test"  # the default output folder
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, "predict-test"])
    _check_outputs(folder, data, "test", 9)
    record = json.loads((folder / "predict.json").read_text())
    assert record["split"] == "test" and record["annotated"] is False and record["epoch"] == 1
    assert record["metrics"] == {}


@pytest.mark.slow
def test_predict_val_prints_the_runs_val_miou(trained, tmp_path, capsys):
    run, data = trained
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    rc = main(["predict", str(run / "best.pt"), "--split", "val", "--out", str(tmp_path / "v")])
    out = capsys.readouterr().out
    assert rc == 0, out
    printed = re.search(r"^val/mIoU ([0-9.]+) \(as the trainer computes it", out, re.M)
    assert printed, out
    assert float(printed.group(1)) == pytest.approx(summary["best_val_mIoU"], abs=1e-6)
    record = json.loads((tmp_path / "v" / "predict.json").read_text())
    assert record["metrics"]["val/mIoU"] == pytest.approx(summary["best_val_mIoU"], abs=1e-9)
    assert "val/mIoU at full resolution" in out and "WARNING" not in out
    _check_outputs(tmp_path / "v", data, "val", 9)
    # --batch-size does not change the score (one confusion matrix over the split)
    rc = main(["predict", str(run), "--split", "val", "--out", str(tmp_path / "b"),
               "--batch-size", "5", "--format", "csv", "-q"])  # fmt: skip
    assert rc == 0
    again = json.loads((tmp_path / "b" / "predict.json").read_text())["metrics"]["val/mIoU"]
    assert again == pytest.approx(summary["best_val_mIoU"], abs=1e-6)
    assert not (tmp_path / "b" / "masks").exists()


@pytest.mark.slow
def test_tta_flip_averages_the_logits_of_the_image_and_its_flip(trained, tmp_path, capsys):
    run, data = trained
    capsys.readouterr()
    rc = main(["predict", str(run), "--split", "val", "--tta", "flip", "--out",
               str(tmp_path / "t"), "--format", "png", "-q"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "val/mIoU with --tta flip" in out
    assert not (tmp_path / "t" / "submission.csv").exists()
    # the identifying score stays the trainer's (no TTA)
    summary = json.loads((run / "summary.json").read_text())
    printed = re.search(r"^val/mIoU ([0-9.]+) \(", out, re.M)
    assert printed and float(printed.group(1)) == pytest.approx(summary["best_val_mIoU"], abs=1e-6)
    # the written masks are the argmax of the averaged logits, upsampled bilinearly
    ckpt = load_run_checkpoint(run)
    model = build_checkpoint_model(ckpt, torch.device("cpu"))
    tf = val_transforms(ckpt.cfg.data.image_size)
    for img in _images(data, "val")[:3]:
        rgb = np.asarray(Image.open(data / img["file_name"]).convert("RGB"))
        x = tf(image=rgb)["image"][None]
        with torch.no_grad():
            logits = (model(x) + model(x.flip(-1)).flip(-1)) / 2
        up = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        expected = up[0].argmax(0).numpy()
        name = img["file_name"].replace(".jpg", ".png")
        png = np.asarray(Image.open(tmp_path / "t" / "masks" / name))
        assert (png == expected).mean() > 0.999  # float ties aside


def _one_line_error(capsys, argv, expect):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert expect in err, err
    return err


@pytest.mark.slow
def test_refusals_are_one_line_and_write_nothing(trained, tmp_path, capsys):
    run, data = trained
    out = str(tmp_path / "o")
    _one_line_error(capsys, ["predict", str(tmp_path), "--out", out], "holds no best.pt")
    _one_line_error(capsys, ["predict", str(run), "--split", "holdout", "--out", out],
                    "has the splits train, val, test")  # fmt: skip
    _one_line_error(capsys, ["predict", str(run), "--format", "csv,jpg", "--out", out],
                    "--format='csv,jpg': choose one or more of csv, png")  # fmt: skip
    _one_line_error(capsys, ["predict", str(run), "--tta", "rot90", "--out", out],
                    "--tta='rot90': must be one of none, flip")  # fmt: skip
    _one_line_error(capsys, ["predict", str(run), "--device", "foo", "--out", out],
                    "--device='foo': must be auto, cpu, cuda, cuda:N or mps")  # fmt: skip
    assert not (tmp_path / "o").exists()

    # an existing output folder is never overwritten
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    _one_line_error(capsys, ["predict", str(run), "--out", out], "already exists")
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep.txt"]
    out = str(tmp_path / "o2")

    # a checkpoint without its config, and one whose classes differ from the data's
    payload = load_checkpoint(run / "best.pt")
    bare = tmp_path / "bare.pt"
    torch.save({"model": payload["model"], "epoch": 1}, bare)
    _one_line_error(capsys, ["predict", str(bare), "--data", str(data), "--out", out],
                    "checkpoint without config, class_names")  # fmt: skip
    other = tmp_path / "other.pt"
    names = list(payload["class_names"])
    names[2] = "cardboard"
    torch.save({**payload, "class_names": names}, other)
    err = _one_line_error(capsys, ["predict", str(other), "--out", out], "class lists differ")
    assert "only in the checkpoint: 'cardboard'" in err and "only in the data: 'paper'" in err
    not_torch = tmp_path / "notes.pt"
    not_torch.write_text("not a checkpoint")
    _one_line_error(capsys, ["predict", str(not_torch), "--out", out], "weights_only=True")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bare.pt",
        "notes.pt",
        "o",
        "other.pt",
    ]  # no o2


def test_class_mismatch_names_the_difference():
    assert class_mismatch(["background", "a", "b"], ["background", "a", "b"]) is None
    text = class_mismatch(["background", "a", "b"], ["background", "a", "c", "d"])
    assert text == (
        "checkpoint has 3 classes, the data 4; only in the checkpoint: 'b'; "
        "only in the data: 'c', 'd'"
    )
    text = class_mismatch(["background", "a", "b"], ["background", "b", "a"])
    assert text is not None and "another order: index 1 is 'a' vs 'b'" in text


def test_a_run_on_the_builtin_dataset_without_its_cache_refuses(tmp_path):
    # data.root None: the built-in dataset, looked for in the run's cache
    cfg = with_overrides(TrialConfig(), {"data.cache_dir": str(tmp_path / "cache")})
    with pytest.raises(PredictError, match=r"not in .*pass --data"):
        resolve_data(cfg, None, None)
    assert not (tmp_path / "cache").exists()  # never generated
