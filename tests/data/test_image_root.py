"""data.image_root / --images: an annotation file with its images in a folder of their own.

The layout of COCO Annotator and labelme exports (DESIGN.md section 6, 4): ``annotations.json``
with bare ``file_name`` values and the images in ``JPEGImages/`` beside it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from harness.cli import main
from harness.config import DataConfig, TrialConfig, with_overrides
from harness.config.sweep import parse_spec
from harness.data.coco import load_coco
from harness.data.dataset import build_datasets
from harness.errors import DataError

W, H = 48, 40
N_IMAGES = 12
CATEGORIES = [{"id": 1, "name": "door"}, {"id": 2, "name": "wheel"}]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _export(tmp_path: Path, n: int = N_IMAGES) -> Path:
    """``export/annotations.json`` + ``export/JPEGImages/train{i}.jpg``; returns the export."""
    root = tmp_path / "export"
    folder = root / "JPEGImages"
    folder.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        name = f"train{i}.jpg"
        image = Image.new("RGB", (W, H), (20 * (i % 10), 90, 140))
        image.paste((230, 40, 40), (4, 4, 24, 30))
        image.save(folder / name)
        images.append({"id": i, "file_name": name, "width": W, "height": H})
        for cat, poly in ((1, _rect(4, 4, 24, 30)), (2, _rect(28, 20, 44, 36))):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "segmentation": [poly],
                    "iscrowd": 0,
                }
            )
    doc = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_without_image_root_the_error_says_where_the_images_seem_to_be(tmp_path: Path) -> None:
    root = _export(tmp_path)
    with pytest.raises(DataError) as info:
        load_coco(root / "annotations.json")
    message = str(info.value)
    assert message.startswith(f"{root / 'annotations.json'}: image id=1: image file not found: ")
    assert f"(and {N_IMAGES - 1} more problems)" in message
    assert f"{N_IMAGES} of {N_IMAGES} image files are not under {root}" in message
    folder = root / "JPEGImages"
    assert message.endswith(
        f"the images seem to be in {folder}: pass --images {folder} (data.image_root)"
    )
    # the folder (not the file) as --data finds the same
    with pytest.raises(DataError, match="pass --images"):
        load_coco(root)


def test_no_hint_when_only_a_few_images_are_missing(tmp_path: Path) -> None:
    root = _export(tmp_path)
    for i in range(2, N_IMAGES + 1):  # all but one beside the JSON, one only in JPEGImages/
        shutil.copy(root / "JPEGImages" / f"train{i}.jpg", root)
    with pytest.raises(DataError) as info:
        load_coco(root / "annotations.json")
    assert "image id=1: image file not found" in str(info.value)
    assert "--images" not in str(info.value)


def test_with_image_root_it_loads(tmp_path: Path) -> None:
    root = _export(tmp_path)
    ds = load_coco(root / "annotations.json", image_root=root / "JPEGImages")
    assert ds.layout == "single" and ds.image_root == root / "JPEGImages"
    assert ds.class_names == ["background", "door", "wheel"]
    assert sum(len(s) for s in ds.splits.values()) == N_IMAGES
    for split in ds.splits.values():
        assert split.image_root == root / "JPEGImages"
        assert all(split.image_path(im).is_file() for im in split.images)


def test_image_root_for_the_competition_layout(tmp_path: Path) -> None:
    root = _export(tmp_path)
    doc = json.loads((root / "annotations.json").read_text())
    for name, ids in (("train", range(1, 9)), ("val", range(9, N_IMAGES + 1))):
        part = dict(doc)
        part["images"] = [im for im in doc["images"] if im["id"] in ids]
        part["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
        (root / f"{name}.json").write_text(json.dumps(part))
    (root / "annotations.json").unlink()
    with pytest.raises(DataError, match="image file not found"):
        load_coco(root)
    ds = load_coco(root, image_root=root / "JPEGImages")
    assert ds.layout == "competition" and {n: len(s) for n, s in ds.splits.items()} == {
        "train": 8,
        "val": N_IMAGES - 8,
    }


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_file_name_escaping_the_image_root_is_refused(tmp_path: Path, kind: str) -> None:
    root = _export(tmp_path)
    escape = root / "escape.jpg"  # a real image of the right size, outside JPEGImages/
    Image.new("RGB", (W, H)).save(escape)
    doc = json.loads((root / "annotations.json").read_text())
    doc["images"][2]["file_name"] = "../escape.jpg" if kind == "dotdot" else str(escape)
    (root / "annotations.json").write_text(json.dumps(doc))
    folder = root / "JPEGImages"
    expected = (
        f"leaves the image folder {folder} ('..')"
        if kind == "dotdot"
        else f"is an absolute path (file names are relative to the image folder {folder})"
    )
    with pytest.raises(DataError) as info:
        load_coco(root / "annotations.json", image_root=folder)
    assert str(info.value).startswith(f"{root / 'annotations.json'}: image id=3: file_name=")
    assert expected in str(info.value)


def test_a_missing_image_root_is_named(tmp_path: Path) -> None:
    root = _export(tmp_path)
    with pytest.raises(DataError, match=r"nope: image folder \(--images, data.image_root\)"):
        load_coco(root / "annotations.json", image_root=root / "nope")
    with pytest.raises(DataError, match="is not a folder"):
        load_coco(root / "annotations.json", image_root=root / "annotations.json")


def test_the_dataset_identity_names_the_image_root(tmp_path: Path) -> None:
    root = _export(tmp_path)
    shutil.copytree(root / "JPEGImages", root / "other")
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"), image_size=32)
    infos = [
        build_datasets(
            dataclasses.replace(cfg, image_root=str(root / folder)),
            root / "annotations.json",
        ).info
        for folder in ("JPEGImages", "other")
    ]
    assert infos[0]["image_root"] == str(root / "JPEGImages")
    assert infos[0]["image_folders"]["train"] == str(root / "JPEGImages")
    assert infos[0]["content_hash"] != infos[1]["content_hash"]
    # masks depend on the annotations alone: both folders share the decoded masks
    assert infos[0]["mask_cache"] == infos[1]["mask_cache"]


def _trial_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "trial",
        "--data", str(root / "annotations.json"),
        "--out", str(tmp_path / "runs"),
        "--image-size", "64",
        "--width", "0.125",
        "--fc-channels", "32",
        "--fc-kernel", "2",
        "--batch-size", "8",
        "--epochs", "1",
        "--tracking", "none",
        "-q",
        *extra,
    ]  # fmt: skip


def test_cli_trial_trains_with_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _export(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default mask cache (runs/cache) lands in tmp_path
    rc = main(_trial_args(root, tmp_path, "--name", "parts"))
    err = capsys.readouterr().err
    assert rc == 2 and "pass --images" in err and err.count("\n") == 1
    rc = main(_trial_args(root, tmp_path, "--name", "parts", "--images", "export/JPEGImages"))
    out = capsys.readouterr().out
    assert rc == 0, out
    run = tmp_path / "runs" / "parts"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["image_root"] == "export/JPEGImages"
    dataset = json.loads((run / "dataset.json").read_text())
    assert json.dumps(dataset).count("export/JPEGImages") >= 1


def test_cli_eda_with_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _export(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eda"
    args = ["eda", "--data", str(root / "annotations.json"), "--out", str(out), "-q"]
    rc = main([*args, "--samples", "2", "--images", str(root / "JPEGImages")])
    assert rc == 0, capsys.readouterr()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dataset"]["image_root"] == str(root / "JPEGImages")
    assert stats["settings"]["image_root"] == str(root / "JPEGImages")
    assert "images in" in (out / "report.html").read_text()


def test_a_sweep_file_sets_the_image_root(tmp_path: Path) -> None:
    doc = {
        "study": "parts",
        "n_trials": 2,
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        "trial": {"data": {"root": "export/annotations.json", "image_root": "export/JPEGImages"}},
    }
    spec = parse_spec(doc)
    assert spec.base.data.image_root == "export/JPEGImages"
    assert spec.base.data.root == "export/annotations.json"
    # the same key as a trial override (what --config and the CLI build on)
    cfg = with_overrides(TrialConfig(), {"data.image_root": "imgs"})
    assert cfg.data.image_root == "imgs"
