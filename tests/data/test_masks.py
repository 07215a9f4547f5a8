"""Overlap policies against a per-pixel brute-force reference, and segmentation decoding."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from harness.data.masks import (
    MaskFormatError,
    build_semantic_mask,
    check_segmentation,
    decode_instance,
    rle_string_counts,
)

H, W = 24, 32
POLICIES = ("max-class", "area-desc", "ignore")


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rle_of(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """COCO RLE of a bool mask: compressed via pycocotools or uncompressed runs by hand."""
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    flat = mask.flatten(order="F").astype(np.int64)  # COCO runs are column-major
    runs: list[int] = []
    current, count = 0, 0
    for v in flat:
        if v == current:
            count += 1
        else:
            runs.append(count)
            current, count = int(v), 1
    runs.append(count)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": runs}


def reference(
    anns: list[dict[str, Any]], cat_to_class: dict[int, int], policy: str, ignore: int = 255
) -> np.ndarray:
    """The label of each pixel decided on its own, straight from the policy's definition."""
    inst = [decode_instance(a, H, W) for a in anns]
    areas = [
        float(a["area"]) if "area" in a else float(m.sum()) for a, m in zip(anns, inst, strict=True)
    ]
    out = np.zeros((H, W), dtype=np.uint8)
    for y in range(H):
        for x in range(W):
            claims = [
                (cat_to_class[a["category_id"]], areas[i], a["id"])
                for i, a in enumerate(anns)
                if inst[i][y, x] and cat_to_class[a["category_id"]] != 0
            ]
            if not claims:
                continue
            if policy == "max-class":
                out[y, x] = max(c for c, _, _ in claims)
            elif policy == "area-desc":
                # painted largest first, ties by id: the smallest area (then the largest id) is last
                out[y, x] = max(claims, key=lambda t: (-t[1], t[2]))[0]
            else:
                classes = {c for c, _, _ in claims}
                out[y, x] = ignore if len(classes) > 1 else classes.pop()
    return out


CATS = {0: 0, 1: 1, 2: 2, 3: 3, 7: 4}  # category 0 is `_background_` (class 0)


def scene() -> list[dict[str, Any]]:
    """A bag with a bottle inside, two overlapping cans, an RLE blob and a two-part object."""
    blob = np.zeros((H, W), dtype=bool)
    blob[2:10, 20:30] = True
    crowd = np.zeros((H, W), dtype=bool)
    crowd[15:22, 1:9] = True
    return [
        {"id": 10, "category_id": 3, "segmentation": [rect(2, 2, 18, 20)], "iscrowd": 0},  # bag
        {"id": 11, "category_id": 1, "segmentation": [rect(6, 6, 12, 14)], "iscrowd": False},
        {"id": 12, "category_id": 2, "segmentation": [rect(14, 10, 24, 18)]},  # can 1
        {"id": 13, "category_id": 2, "segmentation": [rect(20, 12, 30, 22)]},  # can 2, same class
        {"id": 14, "category_id": 7, "segmentation": rle_of(blob), "iscrowd": 1},
        {"id": 15, "category_id": 1, "segmentation": rle_of(crowd, compressed=False), "iscrowd": 1},
        {  # one object drawn as two polygons, overlapping the blob and the bag
            "id": 16,
            "category_id": 2,
            "segmentation": [rect(16, 0, 22, 4), [25.0, 5.0, 31.0, 5.0, 28.0, 11.0]],
        },
        {"id": 17, "category_id": 0, "segmentation": [rect(0, 0, 31, 23)]},  # `_background_`
    ]


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_matches_brute_force(policy: str) -> None:
    anns = scene()
    got = build_semantic_mask(anns, H, W, CATS, policy)
    assert got.dtype == np.uint8 and got.shape == (H, W)
    np.testing.assert_array_equal(got, reference(anns, CATS, policy))


def test_policies_on_bag_with_bottle() -> None:
    anns = scene()
    inside_bottle = (10, 9)  # (y, x) inside both the bag (class 3) and the bottle (class 1)
    both_cans = (15, 22)  # inside both cans (class 2)
    by_policy = {p: build_semantic_mask(anns, H, W, CATS, p) for p in POLICIES}
    assert by_policy["max-class"][inside_bottle] == 3  # higher class index wins
    assert by_policy["area-desc"][inside_bottle] == 1  # smaller object on top
    assert by_policy["ignore"][inside_bottle] == 255  # two different classes
    assert {m[both_cans] for m in by_policy.values()} == {2}  # same class everywhere
    # the `_background_` annotation covering everything paints nothing
    assert all((m == 0).any() for m in by_policy.values())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("policy", POLICIES)
def test_random_scenes_match_brute_force_in_any_order(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    anns = []
    for i in range(8):
        x0, y0 = rng.uniform(0, W - 6), rng.uniform(0, H - 6)
        seg = [rect(x0, y0, x0 + rng.uniform(3, 14), y0 + rng.uniform(3, 12))]
        ann: dict[str, Any] = {"id": 100 - i, "category_id": rng.choice([1, 2, 3, 7])}
        if i % 3 == 0:
            ann["area"] = 50.0  # equal areas: the id decides
        ann["segmentation"] = seg
        anns.append(ann)
    expected = reference(anns, CATS, policy)
    for _ in range(3):
        rng.shuffle(anns)
        np.testing.assert_array_equal(build_semantic_mask(anns, H, W, CATS, policy), expected)


def test_area_desc_ties_break_by_id() -> None:
    a = {"id": 1, "category_id": 1, "area": 40, "segmentation": [rect(0, 0, 10, 10)]}
    b = {"id": 2, "category_id": 2, "area": 40, "segmentation": [rect(5, 5, 15, 15)]}
    for anns in ([a, b], [b, a]):
        assert build_semantic_mask(anns, H, W, CATS, "area-desc")[7, 7] == 2


def test_ignore_index_is_configurable_and_background_default() -> None:
    anns = scene()
    got = build_semantic_mask(anns, H, W, CATS, "ignore", ignore_index=250)
    assert got[10, 9] == 250 and got[23, 31] == 0
    assert build_semantic_mask([], H, W, CATS, "ignore").max() == 0


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="overlap policy"):
        build_semantic_mask([], H, W, CATS, "min-class")


def test_decode_rle_both_encodings_and_multi_polygon() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((H, W)) > 0.6
    for compressed in (True, False):
        got = decode_instance({"segmentation": rle_of(mask, compressed)}, H, W)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, mask)
    p1, p2 = rect(1, 1, 8, 8), rect(15, 10, 25, 20)
    both = decode_instance({"segmentation": [p1, p2]}, H, W)
    union = decode_instance({"segmentation": [p1]}, H, W) | decode_instance(
        {"segmentation": [p2]}, H, W
    )
    np.testing.assert_array_equal(both, union)
    assert both[4, 4] and both[15, 20] and not both[12, 12]
    # a flat list is read as one polygon
    np.testing.assert_array_equal(
        decode_instance({"segmentation": p1}, H, W), decode_instance({"segmentation": [p1]}, H, W)
    )


def test_rle_string_counts_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((H, W)) > rng.random()
        runs = rle_string_counts(rle_of(mask)["counts"])
        assert runs == rle_of(mask, compressed=False)["counts"]


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[1.0, 1.0, 5.0, 5.0]], "2 points, needs at least 3"),
        ([[1.0, 1.0, 5.0, 5.0, 9.0]], "odd number"),
        ([[1.0, "a", 5.0, 5.0, 9.0, 1.0]], "finite numbers"),
        ({"size": [H, W], "counts": [3, 4]}, "cover 7 pixels"),
        ({"size": [H, W + 1], "counts": [H * (W + 1)]}, "not the image size"),
        ({"size": [H, W], "counts": "zz}}"}, "compressed RLE"),
        ({"size": [H, W]}, "'counts'"),
        ("nonsense", "list of polygons"),
    ],
)
def test_bad_segmentations_are_rejected(segmentation: Any, message: str) -> None:
    with pytest.raises(MaskFormatError, match=message):
        check_segmentation(segmentation, H, W)
    with pytest.raises(MaskFormatError):
        decode_instance({"segmentation": segmentation}, H, W)
