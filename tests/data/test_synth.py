"""The built-in synthetic dataset: layout, valid COCO, the quirks it must exercise, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from harness.data import synth
from harness.errors import DataError

SMALL = {"n_train": 30, "n_val": 6, "n_test": 3, "size": 64}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "data", seed=3, **SMALL)


def _coco(root: Path, split: str) -> COCO:
    coco = COCO()
    coco.dataset = json.loads((root / f"{split}.json").read_text())
    coco.createIndex()
    return coco


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_and_counts(root: Path) -> None:
    for split, n in (("train", 30), ("val", 6), ("test", 3)):
        data = json.loads((root / f"{split}.json").read_text())
        assert [im["id"] for im in data["images"]] == list(range(n))  # ids start at 0
        for im in data["images"]:
            assert im["file_name"].startswith(f"{split}/")
            with Image.open(root / im["file_name"]) as img:
                assert img.format == "JPEG"
                assert img.size == (im["width"], im["height"]) == (64, 64)
        assert len(list((root / split).glob("*.jpg"))) == n
        assert data["categories"] == synth.BUILTIN_CATEGORIES
        if split == "test":
            assert data["annotations"] == []
    assert "seed=3" in (root / "README.md").read_text()


def test_categories() -> None:
    ids = [c["id"] for c in synth.BUILTIN_CATEGORIES]
    assert ids == list(range(len(ids))) and len(ids) >= 6  # 0..K-1, id 0 a real class
    assert len({c["name"] for c in synth.BUILTIN_CATEGORIES}) == len(ids)


@pytest.mark.parametrize("split", ["train", "val"])
def test_valid_coco_masks_match_area_and_bbox(root: Path, split: str) -> None:
    coco = _coco(root, split)
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns
    keys = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
    per_image = {im: len(coco.getAnnIds(imgIds=[im])) for im in coco.getImgIds()}
    assert min(per_image.values()) >= 2 and max(per_image.values()) <= 6
    for ann in anns:
        assert keys <= ann.keys()
        assert ann["iscrowd"] in (0, 1)
        mask = coco.annToMask(ann)
        assert mask.shape == (64, 64) and mask.sum() > 0
        assert ann["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if not ann["iscrowd"]:
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])


def test_quirks_present(root: Path) -> None:
    coco = _coco(root, "train")
    anns: list[dict[str, Any]] = coco.loadAnns(coco.getAnnIds())
    assert len({a["category_id"] for a in anns}) >= 6
    crowd = [a for a in anns if a["iscrowd"]]
    # both RLE flavours: uncompressed (list counts) and compressed (str counts)
    assert any(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    assert any(isinstance(a["segmentation"]["counts"], str) for a in crowd)
    assert any(not a["iscrowd"] and len(a["segmentation"]) >= 2 for a in anns)


def test_containment_present(root: Path) -> None:
    """Some object lies >= 90% inside an object of another class (e.g. a bottle in a bag)."""
    coco = _coco(root, "train")
    contained = 0
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        contained += any(
            a["category_id"] != b["category_id"] and (ma & mb).sum() >= 0.9 * ma.sum()
            for a, ma in zip(anns, masks, strict=True)
            for b, mb in zip(anns, masks, strict=True)
            if a is not b
        )
    assert contained >= 5  # "a good share" of 30 images


@pytest.mark.slow
def test_deterministic(tmp_path: Path) -> None:
    params: dict[str, Any] = {"n_train": 4, "n_val": 2, "n_test": 1, "size": 48}
    a = _files(synth.generate(tmp_path / "a", seed=7, **params))
    b = _files(synth.generate(tmp_path / "b", seed=7, **params))
    c = _files(synth.generate(tmp_path / "c", seed=8, **params))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_generate_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(DataError, match=str(tmp_path)):
        synth.generate(tmp_path, n_train=1, n_val=1, n_test=1, size=32)
    assert (tmp_path / "x").read_text() == "keep me"
    synth.generate(tmp_path / "empty_ok", n_train=1, n_val=0, n_test=0, size=32)


def test_ensure_builtin_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = synth.generate

    def counting(out: Path, **kw: Any) -> Path:
        calls.append(out)
        return real(out, **kw)

    monkeypatch.setattr(synth, "generate", counting)
    params: dict[str, Any] = {"n_train": 2, "n_val": 1, "n_test": 1, "size": 32}
    first = synth.ensure_builtin(tmp_path, **params)
    second = synth.ensure_builtin(tmp_path, **params)
    assert first == second and first.parent == tmp_path and first.name.startswith("synth-v1-")
    assert len(calls) == 1 and calls[0] != first  # written to a temp sibling, then renamed
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp folder left behind
    other = synth.ensure_builtin(tmp_path, seed=1, **params)
    assert other != first and len(calls) == 2


def test_ensure_builtin_interrupted_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synth.generate

    def dies(out: Path, **kw: Any) -> Path:
        real(out, **kw)
        raise KeyboardInterrupt

    params: dict[str, Any] = {"n_train": 1, "n_val": 1, "n_test": 1, "size": 32}
    monkeypatch.setattr(synth, "generate", dies)
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_builtin(tmp_path, **params)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synth, "generate", real)
    assert (synth.ensure_builtin(tmp_path, **params) / "train.json").is_file()


def test_ensure_builtin_lost_race_uses_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synth.generate
    params: dict[str, Any] = {"n_train": 1, "n_val": 1, "n_test": 1, "size": 32}
    winner = synth.ensure_builtin(tmp_path / "probe", **params)  # learn the folder name
    target = tmp_path / winner.name

    def racing(out: Path, **kw: Any) -> Path:
        real(target, **kw)  # another process finishes first
        (target / "winner").write_text("")
        return real(out, **kw)

    monkeypatch.setattr(synth, "generate", racing)
    assert synth.ensure_builtin(tmp_path, **params) == target
    assert (target / "winner").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["probe", target.name])
