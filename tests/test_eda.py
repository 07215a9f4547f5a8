"""harness eda: overlap counts against brute force per pixel, the report, the CLI."""

from __future__ import annotations

import base64
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from harness.bench.fixtures import bench_eda, write_bench_dataset
from harness.cli import main
from harness.config import OVERLAP_POLICIES
from harness.data.cache import MaskCache
from harness.data.coco import load_coco
from harness.data.masks import build_semantic_mask, decode_instance
from harness.data.synth import generate
from harness.eda import CONTAINMENT, POLICY_PAIRS, ImageAnalysis, analyze_image, dataset_name
from harness.report.eda import run_eda

H, W = 20, 24
# category id -> class index: id 0 is a "_background_" category (never painted), ids 3..6 real;
# the bag has the highest class, as in the competition, so max-class paints over its contents
CAT_TO_CLASS = {0: 0, 3: 1, 4: 2, 5: 3, 6: 4}
NUM_CLASSES = 5
CAN, BOTTLE, PAPER, BAG = 3, 4, 5, 6  # category ids


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rle_of(mask: np.ndarray, compressed: bool) -> dict[str, Any]:
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"counts": rle["counts"].decode("ascii"), "size": [H, W]}
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"counts": ([0] if flat[0] else []) + runs, "size": [H, W]}


def hand_made() -> list[dict[str, Any]]:
    """Every overlap case in one 24x20 image (ids deliberately out of order)."""
    blob = np.zeros((H, W), dtype=bool)
    blob[12:19, 2:9] = True  # overlaps paper #2 and the multi-polygon can
    crowd = np.zeros((H, W), dtype=bool)
    crowd[0:4, 18:24] = True  # partly on the bag, with a hole
    crowd[1, 20] = False
    specs: list[tuple[int, int, Any, dict[str, Any]]] = [
        (10, BAG, [rect(1, 1, 15, 15)], {"area": 196.0}),  # the bag
        (3, BOTTLE, [rect(4, 4, 9, 12)], {}),  # wholly inside the bag, no JSON area
        (7, PAPER, [rect(12, 8, 20, 14)], {"area": 48.0}),  # paper on the bag's edge
        (8, PAPER, [rect(16, 10, 22, 18)], {"area": 48.0}),  # same class, same area: id decides
        (2, CAN, [rect(6, 13, 10, 17), rect(18, 15, 23, 19)], {}),  # two polygons
        (5, CAN, rle_of(blob, compressed=False), {"iscrowd": 1}),  # same class as #2, RLE
        (9, BOTTLE, rle_of(crowd, compressed=True), {"iscrowd": 1}),
        (4, 0, [rect(0, 0, 12, 6)], {}),  # a background category on top of the bag
        (6, PAPER, [rect(3, 3, 3, 3)], {"area": 0.0}),  # degenerate: no pixels
        (11, BOTTLE, [rect(2, 2, 6, 6)], {"area": 20.0}),  # a third class in the bag corner
    ]
    anns = []
    for ann_id, cat, seg, extra in specs:
        anns.append({"id": ann_id, "image_id": 0, "category_id": cat, "segmentation": seg, **extra})
    return anns


def brute_force(
    anns: list[dict[str, Any]], h: int, w: int, cat_to_class: dict[int, int], num_classes: int
) -> dict[str, Any]:
    """The same quantities, one pixel at a time, straight from the definitions."""
    masks = [decode_instance(a, h, w) for a in anns]
    classes = [cat_to_class[a["category_id"]] for a in anns]
    painted = [i for i in range(len(anns)) if classes[i] != 0]
    overlap = np.zeros((num_classes, num_classes), dtype=np.int64)
    inter = np.zeros((len(anns), len(anns)), dtype=np.int64)
    multi_ann = multi_cls = foreground = 0
    for y in range(h):
        for x in range(w):
            cover = [i for i in painted if masks[i][y, x]]
            foreground += len(cover) >= 1
            multi_ann += len(cover) >= 2
            cls = [classes[i] for i in cover]
            multi_cls += len(set(cls)) >= 2
            for a in set(cls):
                for b in set(cls):
                    if a != b or cls.count(a) >= 2:
                        overlap[a, b] += 1
            for i in cover:
                for j in cover:
                    inter[i, j] += 1
    containment = np.zeros((num_classes, num_classes), dtype=np.int64)
    duplicates = 0
    for i in painted:
        for j in painted:
            area = int(masks[i].sum())
            if i != j and area and inter[i, j] >= CONTAINMENT * area:
                containment[classes[i], classes[j]] += 1
                back = int(masks[j].sum())
                duplicates += i < j and inter[j, i] >= CONTAINMENT * back
    sem = {p: build_semantic_mask(anns, h, w, cat_to_class, p) for p in OVERLAP_POLICIES}
    return {
        "foreground": foreground,
        "multi_annotation": multi_ann,
        "multi_class": multi_cls,
        "class_overlap": overlap,
        "containment": containment,
        "near_duplicates": duplicates,
        "semantic": sem,
    }


def label_vector(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per label with the ignore index in the last slot, as ImageAnalysis.labels."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return np.concatenate([counts[:num_classes], counts[255:]])


def assert_matches(a: ImageAnalysis, ref: dict[str, Any], num_classes: int) -> None:
    assert a.foreground == ref["foreground"]
    assert a.multi_annotation == ref["multi_annotation"]
    assert a.multi_class == ref["multi_class"]
    np.testing.assert_array_equal(a.class_overlap, ref["class_overlap"])
    np.testing.assert_array_equal(a.containment, ref["containment"])
    assert a.near_duplicates == ref["near_duplicates"]
    sem = ref["semantic"]
    ignore = num_classes  # the slot of 255 in the label vectors
    for p in OVERLAP_POLICIES:
        np.testing.assert_array_equal(a.labels[p], label_vector(sem[p], num_classes), err_msg=p)
    for pa, pb in POLICY_PAIRS:
        expected = np.zeros((num_classes + 1,) * 2, dtype=np.int64)
        differ = sem[pa] != sem[pb]
        la = np.where(sem[pa] == 255, ignore, sem[pa])[differ]
        lb = np.where(sem[pb] == 255, ignore, sem[pb])[differ]
        np.add.at(expected, (la, lb), 1)
        np.testing.assert_array_equal(a.changes[(pa, pb)], expected, err_msg=f"{pa} vs {pb}")


# --- counting --------------------------------------------------------------------------------


def test_hand_made_overlaps_match_brute_force() -> None:
    anns = hand_made()
    a = analyze_image(anns, H, W, CAT_TO_CLASS, NUM_CLASSES)
    ref = brute_force(anns, H, W, CAT_TO_CLASS, NUM_CLASSES)
    assert_matches(a, ref, NUM_CLASSES)
    # the cases the annotations were made for are really there
    can, bottle, paper, bag = 1, 2, 3, 4
    assert a.containment[bottle, bag] >= 1  # the bottle in the bag
    assert a.class_overlap[paper, paper] > 0 and a.class_overlap[can, can] > 0  # same class
    assert a.class_overlap[bag, paper] == a.class_overlap[paper, bag] > 0
    assert a.multi_class < a.multi_annotation  # same-class pixels are overlaps, not conflicts
    assert a.differing(("max-class", "area-desc")) > 0
    # per-annotation facts: multi-polygon, RLE, crowd, the empty one
    assert a.polygons.tolist() == [1, 1, 1, 1, 2, 0, 0, 1, 1, 1]
    assert a.crowd.sum() == 2 and a.areas[8] == 0 and a.classes[7] == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_overlaps_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w, num_classes = 14, 17, 4
    cat_to_class = {0: 0, 1: 1, 2: 2, 3: 3}
    anns = []
    for k in range(int(rng.integers(2, 12))):
        x0, y0 = rng.uniform(-2, w - 2), rng.uniform(-2, h - 2)
        x1, y1 = x0 + rng.uniform(1, 12), y0 + rng.uniform(1, 10)
        seg: Any = [rect(x0, y0, x1, y1)]
        if rng.random() < 0.3:  # a second polygon
            seg.append(rect(x1, y1, x1 + 3, y1 + 2))
        ann: dict[str, Any] = {
            "id": int(rng.integers(0, 5)) * 100 + k,
            "image_id": 0,
            "category_id": int(rng.integers(0, 4)),
            "segmentation": seg,
        }
        if rng.random() < 0.5:  # ties and JSON areas that disagree with the pixels
            ann["area"] = float(rng.choice([10.0, 20.0, 30.0]))
        anns.append(ann)
    a = analyze_image(anns, h, w, cat_to_class, num_classes)
    assert_matches(a, brute_force(anns, h, w, cat_to_class, num_classes), num_classes)
    # the file order does not matter
    shuffled = [anns[i] for i in rng.permutation(len(anns))]
    b = analyze_image(shuffled, h, w, cat_to_class, num_classes)
    np.testing.assert_array_equal(b.class_overlap, a.class_overlap)
    for p in OVERLAP_POLICIES:
        np.testing.assert_array_equal(b.labels[p], a.labels[p])


def test_more_than_64_annotations_in_one_image() -> None:
    # the bit codes then span two words
    h, w = 12, 12
    anns = [
        {
            "id": k,
            "image_id": 0,
            "category_id": 1 + k % 3,
            "segmentation": [rect(k % 7, k % 5, k % 7 + 5, k % 5 + 6)],
        }
        for k in range(70)
    ]
    cat_to_class = {1: 1, 2: 2, 3: 3}
    a = analyze_image(anns, h, w, cat_to_class, 4)
    assert_matches(a, brute_force(anns, h, w, cat_to_class, 4), 4)


def test_containment_threshold_is_inclusive() -> None:
    outer = np.zeros((H, W), dtype=bool)
    outer[0:10, 0:10] = True
    exact = np.zeros((H, W), dtype=bool)
    exact[1:11, 5] = True  # 10 pixels, 9 inside: exactly 90%
    below = np.zeros((H, W), dtype=bool)
    below[2:12, 7] = True  # 10 pixels, 8 inside
    anns = [
        {"id": k, "image_id": 0, "category_id": cat, "segmentation": rle_of(m, k % 2 == 0)}
        for k, (cat, m) in enumerate([(BAG, outer), (BOTTLE, exact), (CAN, below)])
    ]
    a = analyze_image(anns, H, W, CAT_TO_CLASS, NUM_CLASSES)
    assert a.containment.sum() == 1 and a.containment[2, 4] == 1
    assert_matches(a, brute_force(anns, H, W, CAT_TO_CLASS, NUM_CLASSES), NUM_CLASSES)


def test_no_annotations() -> None:
    a = analyze_image([], 5, 6, CAT_TO_CLASS, NUM_CLASSES)
    assert a.foreground == a.multi_annotation == 0
    assert a.labels["ignore"][0] == 30 and a.labels["ignore"].sum() == 30


# --- datasets and the report -----------------------------------------------------------------


def _write_single(root: Path, n: int = 6) -> Path:
    """A single-file layout: each image has the hand-made annotations, one is empty."""
    images, anns = [], []
    for iid in range(n):
        images.append({"id": iid, "file_name": f"{iid}.png", "width": W, "height": H})
        if iid == n - 1:
            continue  # an empty image
        for a in hand_made():
            anns.append({**a, "id": len(anns) + 1, "image_id": iid})
    categories = [
        {"id": 0, "name": "_background_"},
        {"id": 3, "name": "can"},
        {"id": 4, "name": "bottle"},
        {"id": 5, "name": "paper"},
        {"id": 6, "name": "bag"},
    ]
    root.mkdir(parents=True)
    (root / "trainval.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for img in images:
        pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / img["file_name"])
    return root


def _check_html(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    # self-contained: no external resources, every image inline and a real PNG
    assert not re.search(r"(src|href)=[\"'](?!data:)", text)
    assert "<script" not in text and "<link" not in text
    srcs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert srcs
    for src in srcs:
        assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"
    return text


@pytest.mark.slow
def test_report_for_a_single_file_layout(tmp_path: Path) -> None:
    root = _write_single(tmp_path / "data")
    result, html = run_eda(root, tmp_path / "eda", val_fraction=0.34, cache_dir=None)
    text = _check_html(html)
    assert "Can a pixel carry several labels?" in text
    stats = json.loads((tmp_path / "eda" / "stats.json").read_text())
    assert stats["dataset"]["layout"] == "single"
    assert stats["dataset"]["splits"] == {"train": 4, "val": 2}
    total = stats["splits"]["all"]
    assert total["images"] == 6 and total["empty_images"] == 1
    assert total["annotations"] == 5 * 10
    assert total["crowd_annotations"] == 10 and total["rle_annotations"] == 10
    assert total["multi_polygon_annotations"] == 5 and total["zero_area_annotations"] == 5
    assert total["background_annotations"] == 5
    assert total["image_sizes"] == [{"width": W, "height": H, "images": 6}]
    assert total["annotations_per_image"]["histogram"][0] == 1
    # the totals are five times one image's counts
    one = analyze_image(hand_made(), H, W, CAT_TO_CLASS, NUM_CLASSES)
    ov = total["overlap"]
    assert ov["multi_annotation_pixels"] == 5 * one.multi_annotation
    assert ov["multi_class_pixels"] == 5 * one.multi_class
    np.testing.assert_array_equal(ov["class_matrix"], 5 * one.class_overlap)
    np.testing.assert_array_equal(ov["containment"]["matrix"], 5 * one.containment)
    assert {"inner": "bottle", "outer": "bag", "count": 5 * int(one.containment[2, 4])} in (
        ov["containment"]["by_class_pair"]
    )
    classes = {c["name"]: c for c in total["classes"]}
    assert classes["can"]["instances"] == 10 and classes["can"]["crowd"] == 5
    assert classes["paper"]["images"] == 5
    for p in OVERLAP_POLICIES:
        assert (
            sum(c["pixels"][p] for c in total["classes"])
            + (total["policies"]["ignore_pixels"] if p == "ignore" else 0)
            == 6 * H * W
        )
    pairs = {(p["a"], p["b"]): p for p in total["policies"]["pairs"]}
    assert pairs[("max-class", "area-desc")]["pixels"] == 5 * one.differing(POLICY_PAIRS[0])
    assert pairs[("max-class", "area-desc")]["images"] == 5
    # the per-split numbers add up to the total
    assert sum(stats["splits"][s]["annotations"] for s in ("train", "val")) == 50
    # samples: the images where the policies differ most, masks checked against the counts
    assert len(stats["samples"]) == 5 and all(s["consistent"] for s in stats["samples"])
    assert not stats["warnings"]
    assert {p.name for p in (tmp_path / "eda").glob("*.png")} >= {
        "class_frequency.png",
        "overlap_matrix.png",
        "containment_matrix.png",
        "policy_labels.png",
        "object_sizes.png",
        "policy_samples.png",
    }
    assert result.splits["all"].images == 6


@pytest.mark.slow
def test_report_for_the_builtin_dataset_reads_the_mask_cache(tmp_path: Path) -> None:
    root = generate(tmp_path / "synth", seed=1, n_train=14, n_val=6, n_test=3, size=64)
    dataset = load_coco(root)
    cache = tmp_path / "cache"
    MaskCache.build(dataset.splits["train"], dataset, "max-class", cache)
    MaskCache.build(dataset.splits["val"], dataset, "max-class", cache)
    _, html = run_eda(root, tmp_path / "eda", cache_dir=cache, n_samples=3)
    _check_html(html)
    stats = json.loads((tmp_path / "eda" / "stats.json").read_text())
    assert stats["dataset"]["layout"] == "competition"
    assert stats["splits"]["test"] == {
        "images": 3,
        "annotated": False,
        "image_sizes": [{"width": 64, "height": 64, "images": 3}],
    }
    assert stats["splits"]["all"]["images"] == 20  # train + val, not the unannotated test
    assert stats["splits"]["all"]["overlap"]["multi_class_pixels"] > 0  # objects in bags
    assert stats["splits"]["all"]["overlap"]["containment"]["by_class_pair"][0]["outer"] == (
        "plastic_bag"
    )
    assert len(stats["samples"]) == 3
    for s in stats["samples"]:
        assert s["consistent"] and "cache" in s["mask_source"]
    # no mask cache was written (only read)
    assert len(list((cache / "masks").iterdir())) == 2


# --- CLI -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_eda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _write_single(tmp_path / "data", n=4)
    out = tmp_path / "report"
    rc = main(
        [
            "eda",
            "--data",
            str(root),
            "--out",
            str(out),
            "--samples",
            "2",
            "-q",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "max-class vs area-desc" in captured.out and "report.html" in captured.out
    assert (out / "report.html").is_file() and (out / "stats.json").is_file()
    assert len(json.loads((out / "stats.json").read_text())["samples"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/missing"], "dataset root does not exist"),
        (["--data", "{tmp}"], "no dataset layout found"),
        (["--data", "{tmp}", "--val-fraction", "1.5"], "--val-fraction=1.5"),
    ],
)
def test_cli_eda_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc = main(["eda", *(a.format(tmp=tmp_path) for a in args), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_dataset_name(tmp_path: Path) -> None:
    (tmp_path / "fruits" / "data").mkdir(parents=True)
    assert dataset_name(tmp_path / "fruits" / "data") == "fruits-data"
    assert dataset_name(tmp_path / "fruits") == "fruits"


@pytest.mark.slow
def test_bench_runs_on_a_small_set(tmp_path: Path) -> None:
    root = write_bench_dataset(tmp_path / "b", n_train=6, n_val=3, size=96)
    train = json.loads((root / "train.json").read_text())
    assert len(train["images"]) == 6 and len({a["image_id"] for a in train["annotations"]}) > 3
    m = bench_eda(n_train=6, n_val=3, size=96, tmp_dir=tmp_path)
    assert m["images"] == 9 and m["total_s"] > 0


def test_pairs_cover_every_policy_pair() -> None:
    assert set(POLICY_PAIRS) == set(itertools.combinations(OVERLAP_POLICIES, 2))
