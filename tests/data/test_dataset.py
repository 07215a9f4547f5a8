"""Loading, validation, mask cache, transforms and datasets on tiny hand-made COCO folders."""

from __future__ import annotations

import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import harness.data.coco as coco_mod
from harness.bench.fixtures import bench_masks
from harness.config import DataConfig
from harness.data import masks as masks_mod
from harness.data.cache import MaskCache, cache_key
from harness.data.coco import load_coco, split_ids
from harness.data.dataset import SegmentationDataset, build_datasets, fixed_val_indices
from harness.data.transforms import seed_worker, train_transforms, val_transforms
from harness.errors import DataError

W, H = 40, 30  # image size of the hand-made sets (width x height)
CATEGORIES = [
    {"id": 0, "name": "_background_"},
    {"id": 1, "name": "bag"},
    {"id": 2, "name": "bottle"},
    {"id": 5, "name": "can"},
]


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def coco_json(image_ids: list[int], prefix: str = "", ext: str = ".jpg") -> dict[str, Any]:
    """Images with a bag holding a bottle, plus a can; image ids as given (0 included)."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for iid in image_ids:
        images.append({"id": iid, "file_name": f"{prefix}{iid}{ext}", "width": W, "height": H})
        for cat, poly in (
            (1, rect(2, 2, 25, 25)),
            (2, rect(8, 8, 16, 20)),
            (5, rect(28, 4, 38, 14)),
        ):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": cat,
                    "segmentation": [poly],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def write_images(folder: Path, data: dict[str, Any]) -> None:
    for img in data["images"]:
        path = folder / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((img["height"], img["width"], 3), 40 + 10 * img["id"], dtype=np.uint8)
        pixels[:, : img["width"] // 2, 0] = 200  # some structure for the augmentations to move
        Image.fromarray(pixels).save(path)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_competition(root: Path, test: bool = True) -> Path:
    for name, ids in (("train", [0, 1, 2, 3]), ("val", [0, 1]), ("test", [0])):
        if name == "test" and not test:
            continue
        data = coco_json(ids, prefix=f"batch_{name}/")
        if name == "test":
            del data["annotations"]
        write_json(root / f"{name}.json", data)
        write_images(root, data)
    return root


def make_coco_layout(root: Path, suffix: str = "2017") -> Path:
    for name, ids in (("train", [5, 6, 7]), ("val", [8, 9])):
        data = coco_json(ids)
        write_json(root / "annotations" / f"instances_{name}{suffix}.json", data)
        write_images(root / f"{name}{suffix}", data)
    return root


def make_single(root: Path, n: int = 10, images_dir: bool = True) -> Path:
    data = coco_json(list(range(n)))
    write_json(root / "trainval.json", data)
    write_images(root / "images" if images_dir else root, data)
    return root


# --- class map and layouts -------------------------------------------------------------------


def test_class_map_with_category_id_0_and_background(tmp_path: Path) -> None:
    ds = load_coco(make_single(tmp_path))
    assert ds.class_names == ["background", "bag", "bottle", "can"]
    assert ds.cat_to_class == {0: 0, 1: 1, 2: 2, 5: 3}


def test_category_id_0_as_a_real_class(tmp_path: Path) -> None:
    data = coco_json([0, 1])
    data["categories"] = [{"id": 0, "name": "UNKNOWN"}, *CATEGORIES[1:]]
    write_json(tmp_path / "trainval.json", data)
    write_images(tmp_path, data)
    ds = load_coco(tmp_path)
    assert ds.class_names == ["background", "UNKNOWN", "bag", "bottle", "can"]
    assert ds.cat_to_class[0] == 1  # pixel value = category index + 1, as in the competition


def test_competition_layout(tmp_path: Path) -> None:
    ds = load_coco(make_competition(tmp_path))
    assert ds.layout == "competition"
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 2, "test": 1}
    train = ds.splits["train"]
    assert train.image_root == tmp_path
    assert train.images[0]["id"] == 0 and len(train.anns_by_image[0]) == 3
    assert ds.splits["test"].anns_by_image == {0: []}
    assert train.content_hash != ds.splits["val"].content_hash


@pytest.mark.parametrize("suffix", ["2017", ""])
def test_coco_layout(tmp_path: Path, suffix: str) -> None:
    ds = load_coco(make_coco_layout(tmp_path, suffix))
    assert ds.layout == "coco"
    assert ds.splits["train"].image_root == tmp_path / f"train{suffix}"
    assert [im["id"] for im in ds.splits["val"].images] == [8, 9]


@pytest.mark.parametrize("images_dir", [True, False])
def test_single_file_layout(tmp_path: Path, images_dir: bool) -> None:
    root = make_single(tmp_path, images_dir=images_dir)
    ds = load_coco(root, val_fraction=0.3)
    assert ds.layout == "single"
    assert ds.splits["train"].image_root == (root / "images" if images_dir else root)
    train = [im["id"] for im in ds.splits["train"].images]
    val = [im["id"] for im in ds.splits["val"].images]
    assert len(val) == 3 and sorted(train + val) == list(range(10))
    # the path of the JSON file itself works too and gives the same split
    same = load_coco(root / "trainval.json", val_fraction=0.3)
    assert [im["id"] for im in same.splits["val"].images] == val


def test_single_file_split_is_deterministic_and_order_free(tmp_path: Path) -> None:
    root = make_single(tmp_path, n=20)
    first = load_coco(root, split_seed=3)
    val_ids = [im["id"] for im in first.splits["val"].images]
    assert len(val_ids) == 4
    data = json.loads((root / "trainval.json").read_text())
    data["images"].reverse()
    data["annotations"].reverse()
    write_json(root / "trainval.json", data)
    again = load_coco(root, split_seed=3)
    assert [im["id"] for im in again.splits["val"].images] == val_ids
    others = {tuple(split_ids(list(range(20)), 0.2, seed)[1]) for seed in range(5)}
    assert len(others) > 1  # the seed matters


# --- validation errors -----------------------------------------------------------------------


def _mutated(tmp_path: Path, mutate: Any) -> Path:
    root = make_single(tmp_path / "ds")
    data = json.loads((root / "trainval.json").read_text())
    mutate(data, root)
    write_json(root / "trainval.json", data)
    return root


def _expect_error(root: Path, *parts: str) -> str:
    with pytest.raises(DataError) as info:
        load_coco(root)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


def _ann(data: dict[str, Any], ann_id: int) -> dict[str, Any]:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _img(data: dict[str, Any], image_id: int) -> dict[str, Any]:
    return next(i for i in data["images"] if i["id"] == image_id)


@pytest.mark.parametrize(
    ("mutate", "parts"),
    [
        (
            lambda d, r: _ann(d, 4).update(category_id=42),
            ["annotation id=4", "category_id=42 is not a known category"],
        ),
        (
            lambda d, r: _ann(d, 5).update(image_id=99),
            ["annotation id=5", "image_id=99 is not a known image"],
        ),
        (
            lambda d, r: _ann(d, 6).update(segmentation=[[1, 1, 5, 5]]),
            ["annotation id=6", "2 points, needs at least 3"],
        ),
        (
            lambda d, r: _ann(d, 6).update(segmentation=[[1, 1, 5, 5, 7]]),
            ["annotation id=6", "odd number of coordinates"],
        ),
        (
            lambda d, r: _ann(d, 7).update(segmentation={"size": [H, W], "counts": [5, 5]}),
            ["annotation id=7", "RLE runs cover 10 pixels"],
        ),
        (
            lambda d, r: _ann(d, 8).pop("segmentation"),
            ["annotation id=8", "missing key 'segmentation'"],
        ),
        (lambda d, r: _img(d, 3).pop("file_name"), ["image id=3", "missing key 'file_name'"]),
        (lambda d, r: d.pop("categories"), ["missing top-level key 'categories'"]),
        (lambda d, r: _ann(d, 9).update(id=1), ["annotation id=1", "duplicate annotation id"]),
        (lambda d, r: _img(d, 4).update(id=0), ["image id=0", "duplicate image id"]),
        (lambda d, r: _ann(d, 4).update(iscrowd="yes"), ["annotation id=4", "iscrowd='yes'"]),
        (
            lambda d, r: _img(d, 2).update(width=W + 1),
            ["image id=2", "is 40x30 on disk but the JSON says 41x30"],
        ),
        (
            lambda d, r: (r / "images" / "7.jpg").unlink(),
            ["image id=7", "image file not found", "7.jpg"],
        ),
    ],
)
def test_validation_errors_name_file_and_record(
    tmp_path: Path, mutate: Any, parts: list[str]
) -> None:
    root = _mutated(tmp_path, mutate)
    _expect_error(root, "trainval.json: ", *parts)


def test_all_problems_are_counted_in_one_line(tmp_path: Path) -> None:
    def mutate(d: dict[str, Any], r: Path) -> None:
        for ann in d["annotations"][:3]:
            ann["category_id"] = 42

    message = _expect_error(_mutated(tmp_path, mutate), "annotation id=1", "(and 2 more problems)")
    assert message.count("trainval.json") == 1


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_paths_outside_the_image_folder_are_rejected_unopened(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "x.jpg"
    Image.new("RGB", (W, H)).save(outside)  # exists and is a valid image of the right size

    def mutate(d: dict[str, Any], r: Path) -> None:
        if kind == "dotdot":
            _img(d, 1)["file_name"] = "../../x.jpg"
        elif kind == "absolute":
            _img(d, 1)["file_name"] = str(outside)
        else:
            (r / "images" / "link.jpg").symlink_to(outside)
            _img(d, 1)["file_name"] = "link.jpg"

    root = _mutated(tmp_path, mutate)
    opened: list[str] = []
    real_open = coco_mod.Image.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(coco_mod.Image, "open", spy)
    reason = {"dotdot": "leaves the image folder", "absolute": "absolute path"}.get(
        kind, "resolves outside"
    )
    _expect_error(root, "trainval.json: image id=1: file_name=", reason)
    assert str(outside.resolve()) not in opened
    with pytest.raises(DataError):  # the path check does not depend on opening images
        load_coco(root, check_images=False)


def test_malformed_json(tmp_path: Path) -> None:
    root = make_single(tmp_path)
    (root / "trainval.json").write_text('{"images": [1, 2,, ]}')
    _expect_error(root, "trainval.json: not valid JSON (line 1 column")


def test_missing_root_and_unknown_layout(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope", "nope: dataset root does not exist")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    _expect_error(tmp_path, "no dataset layout found", "train.json + val.json", "a.json, b.json")


def test_splits_must_agree_on_categories(tmp_path: Path) -> None:
    root = make_competition(tmp_path, test=False)
    data = json.loads((root / "val.json").read_text())
    data["categories"][2]["name"] = "glass"
    write_json(root / "val.json", data)
    _expect_error(root, "val.json: category id=2: name 'glass' differs from 'bottle'", "train.json")


# --- mask cache ------------------------------------------------------------------------------


def test_cache_matches_direct_decode_and_hits_on_second_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_coco(make_competition(tmp_path / "ds"))
    split = ds.splits["train"]
    cache = MaskCache.build(split, ds, "area-desc", tmp_path / "cache")
    assert cache.path.parent == tmp_path / "cache" / "masks" and len(cache.path.name) == 16
    for img in split.images:
        expected = masks_mod.build_semantic_mask(
            split.anns_by_image[img["id"]], H, W, ds.cat_to_class, "area-desc"
        )
        got = cache[img["id"]]
        np.testing.assert_array_equal(got, expected)
        got[:] = 7  # a copy: writing to it must not touch the cache
    np.testing.assert_array_equal(
        cache[0],
        masks_mod.build_semantic_mask(split.anns_by_image[0], H, W, ds.cat_to_class, "area-desc"),
    )

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded again")

    monkeypatch.setattr(masks_mod, "build_semantic_mask", boom)
    again = MaskCache.build(split, ds, "area-desc", tmp_path / "cache")
    assert again.path == cache.path
    np.testing.assert_array_equal(again[3], cache[3])
    restored = pickle.loads(pickle.dumps(again))  # spawned DataLoader workers pickle it
    np.testing.assert_array_equal(restored[3], cache[3])
    with pytest.raises(AssertionError, match="decoded again"):
        MaskCache.build(split, ds, "max-class", tmp_path / "cache")


def test_cache_key_covers_policy_split_and_ignore_index(tmp_path: Path) -> None:
    ds = load_coco(make_competition(tmp_path))
    train, val = ds.splits["train"], ds.splits["val"]
    keys = {
        cache_key(train, ds, "max-class"),
        cache_key(train, ds, "area-desc"),
        cache_key(train, ds, "ignore"),
        cache_key(train, ds, "ignore", ignore_index=254),
        cache_key(val, ds, "max-class"),
    }
    assert len(keys) == 5


def test_broken_cache_is_rebuilt_and_leaves_no_temp(tmp_path: Path) -> None:
    ds = load_coco(make_competition(tmp_path / "ds"))
    split = ds.splits["val"]
    cache = MaskCache.build(split, ds, "ignore", tmp_path / "cache")
    (cache.path / "masks.u8").write_bytes(b"\0" * 10)  # truncated, as after a crash
    rebuilt = MaskCache.build(split, ds, "ignore", tmp_path / "cache")
    np.testing.assert_array_equal(
        rebuilt[1],
        masks_mod.build_semantic_mask(split.anns_by_image[1], H, W, ds.cat_to_class, "ignore"),
    )
    assert sorted(p.name for p in (tmp_path / "cache" / "masks").iterdir()) == [cache.path.name]


def test_concurrent_builds_agree(tmp_path: Path) -> None:
    ds = load_coco(make_competition(tmp_path / "ds"))
    split = ds.splits["train"]
    with ThreadPoolExecutor(4) as pool:
        caches = list(
            pool.map(lambda _: MaskCache.build(split, ds, "max-class", tmp_path / "c"), range(8))
        )
    assert len({c.path for c in caches}) == 1
    for c in caches:
        np.testing.assert_array_equal(c[2], caches[0][2])
    assert len(list((tmp_path / "c" / "masks").iterdir())) == 1


def test_bench_masks_smoke(tmp_path: Path) -> None:
    result = bench_masks(n_images=4, size=64, anns_per_image=3, tmp_dir=tmp_path)
    assert result["decode_s"] > 0 and result["cache_s"] > 0 and result["speedup"] > 0
    assert list(tmp_path.iterdir()) == []  # cleans up after itself


# --- transforms and datasets -----------------------------------------------------------------


def _striped_sample() -> tuple[np.ndarray, np.ndarray]:
    # Classes 1 and 3 side by side (no 2) and 255 next to 0: any interpolation invents values.
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[:, 5:15] = 1
    mask[:, 15:25] = 3
    mask[:, 25:28] = 255
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    return image, mask


@pytest.mark.parametrize("size", [32, 57, 96])
def test_masks_are_resized_nearest(size: int) -> None:
    image, mask = _striped_sample()
    for tf in (train_transforms(size, seed=1), val_transforms(size)):
        for _ in range(5):
            out = tf(image=image, mask=mask)
            assert tuple(out["image"].shape) == (3, size, size)
            assert out["image"].dtype == torch.float32
            assert set(np.unique(np.asarray(out["mask"]))) <= {0, 1, 3, 255}


def test_same_seed_same_augmentation() -> None:
    image, mask = _striped_sample()
    a = [train_transforms(48, seed=7)(image=image, mask=mask) for _ in range(2)]
    assert torch.equal(a[0]["image"], a[1]["image"]) and torch.equal(a[0]["mask"], a[1]["mask"])
    tf = train_transforms(48, seed=7)
    outs = [tf(image=image, mask=mask)["image"] for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # but it does augment


def _bundle(tmp_path: Path, **cfg: Any) -> Any:
    root = make_competition(tmp_path / "ds")
    data_cfg = DataConfig(image_size=32, cache_dir=str(tmp_path / "cache"), **cfg)
    return build_datasets(data_cfg, root)


def test_dataset_items(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, overlap="ignore")
    assert bundle.class_names == ["background", "bag", "bottle", "can"]
    assert bundle.ignore_index == 255
    assert len(bundle.train) == 4 and len(bundle.val) == 2
    info = bundle.info
    assert info["layout"] == "competition" and info["overlap"] == "ignore"
    assert info["n_images"] == {"train": 4, "val": 2, "test": 1}
    assert len(info["content_hash"]) == 64
    for ds in (bundle.train, bundle.val):
        image, mask = ds[0]
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 32, 32)
        assert mask.dtype == torch.int64 and tuple(mask.shape) == (32, 32)
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 255}
    _, val_mask = bundle.val[0]
    assert 255 in val_mask.unique().tolist()  # the bottle inside the bag conflicts
    # validation is deterministic
    assert torch.equal(bundle.val[1][0], bundle.val[1][0])


def test_no_augment_uses_val_transforms(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, augment=False)
    assert torch.equal(bundle.train[2][0], bundle.train[2][0])
    assert torch.equal(bundle.train[2][1], bundle.train[2][1])


def _epoch(ds: SegmentationDataset, seed: int) -> list[torch.Tensor]:
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=2,
        shuffle=True,
        num_workers=2,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    return [images for images, _ in loader]


@pytest.mark.slow
def test_dataloader_workers_are_deterministic(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    first, second = _epoch(bundle.train, 0), _epoch(bundle.train, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_fixed_val_indices() -> None:
    assert fixed_val_indices(10, 3) == [1, 5, 8]
    assert fixed_val_indices(3, 5) == [0, 1, 2]
    assert fixed_val_indices(0, 4) == [] and fixed_val_indices(5, 0) == []
    picks = fixed_val_indices(655, 8)
    assert len(set(picks)) == 8 and picks == sorted(picks) and max(picks) < 655


class _SameSample(SegmentationDataset):
    """Every item is the same picture: only the augmentation RNG can tell two items apart."""

    def __len__(self) -> int:
        return 4

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return _striped_sample()


def test_workers_do_not_replay_each_others_augmentations(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    ds = _SameSample(bundle.train.split, bundle.train.masks, train_transforms(32, seed=0))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=1,
        num_workers=2,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(0),
    )
    images = [batch[0] for batch in loader]  # items 0 and 1 come from different workers
    assert not torch.equal(images[0], images[1])


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_split_is_one_data_error(tiny_data, tmp_path, split):
    """No images to train on is torch's traceback, none to validate on a trial that 'finished'
    with mIoU nan: both are the data's fault, said before anything runs."""
    import shutil

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    doc = json.loads((data / f"{split}.json").read_text())
    doc["images"], doc["annotations"] = [], []
    (data / f"{split}.json").write_text(json.dumps(doc))
    cfg = DataConfig(root=str(data), image_size=64, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=rf"{split}.json: the {split} split holds no images"):
        build_datasets(cfg, data)
