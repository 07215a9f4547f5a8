"""Load a COCO-format segmentation dataset and validate all of it before any training starts.

Three layouts are detected from ``root`` (DESIGN.md section 6):

- ``competition``: ``root/train.json`` + ``root/val.json`` (+ optional ``test.json``), each
  ``file_name`` relative to ``root``;
- ``coco``: ``root/annotations/instances_{train,val}[suffix].json`` with the images in
  ``root/{train,val}[suffix]/`` (e.g. ``instances_train2017.json`` + ``train2017/``);
- ``single``: exactly one ``*.json`` in ``root`` (or ``root`` is that file) and the images in the
  same folder or in ``images/`` beside it; split into train/val deterministically.

With ``image_root`` (``data.image_root``, ``--images``) the images of every split are in that one
folder instead, ``file_name`` relative to it: COCO Annotator and labelme exports keep them in
``JPEGImages/`` with bare file names, as detectron2's and MMDetection's image root.

Every problem is a :class:`~harness.errors.DataError` with a one-line message naming the file and
the record, e.g. ``data/train.json: annotation id=17: category_id=42 is not a known category``.
Image files are only ever opened after their path was proven to stay inside the image folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.data.images import escapes, images_elsewhere, pick_image_root
from harness.data.masks import MaskFormatError, check_segmentation
from harness.errors import DataError

LAYOUTS = ("competition", "coco", "single")
BACKGROUND_NAMES = ("background", "_background_")
MAX_CLASSES = 255  # masks are uint8 and 255 is the ignore index

_COCO_ANN = re.compile(r"instances_(train|val|test)(.*)\.json")


@dataclass(frozen=True)
class CocoSplit:
    name: str
    ann_path: Path
    image_root: Path
    images: list[dict[str, Any]] = field(repr=False)  # COCO image records, in a fixed order
    anns_by_image: dict[int, list[dict[str, Any]]] = field(repr=False)
    content_hash: str  # sha256 of the annotation file bytes + which images this split holds

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.image_root / image["file_name"]


@dataclass(frozen=True)
class CocoDataset:
    root: Path
    layout: str
    class_names: list[str]  # class 0 is "background"
    cat_to_class: dict[int, int]  # COCO category id -> class index
    splits: dict[str, CocoSplit]  # "train", "val", optional "test"
    image_root: Path | None = None  # data.image_root as given; None: each layout's own folders

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --- small helpers ---------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    """An integer id or size; integral floats (512.0, written by some converters) are accepted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class _Problems:
    """Collects the problems of one file; the error reports the first one and how many more."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: str | None = None
        self.count = 0

    def add(self, record: str, message: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{self.path}: {record}: {message}"

    def raise_if_any(self, hint: str = "") -> None:
        if self.first is not None:
            more = f" (and {self.count - 1} more problems)" if self.count > 1 else ""
            raise DataError(self.first + more + hint)


def _record(kind: str, rec: Any, index: int) -> str:
    # Name a record by its id where it has a usable one, by its position otherwise.
    rid = _as_int(rec.get("id")) if isinstance(rec, dict) else None
    return f"{kind} id={rid}" if rid is not None else f"{kind} #{index}"


# --- layout detection ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    name: str
    ann_path: Path
    image_roots: tuple[Path, ...]  # candidates, the first that holds the images wins


def _detect_layout(root: Path) -> tuple[str, list[_Source]]:
    if root.is_file():
        if root.suffix.lower() != ".json":
            raise DataError(f"{root}: not a JSON annotation file or a dataset folder")
        return "single", [_Source("all", root, (root.parent, root.parent / "images"))]
    if not root.is_dir():
        raise DataError(f"{root}: not a file or folder")

    if (root / "train.json").is_file() and (root / "val.json").is_file():
        names = ["train", "val"] + (["test"] if (root / "test.json").is_file() else [])
        return "competition", [_Source(n, root / f"{n}.json", (root,)) for n in names]

    ann_dir = root / "annotations"
    if ann_dir.is_dir():
        found: dict[str, list[tuple[Path, str]]] = {}
        for path in sorted(ann_dir.glob("instances_*.json")):
            match = _COCO_ANN.fullmatch(path.name)
            if match:
                found.setdefault(match.group(1), []).append((path, match.group(2)))
        if "train" in found and "val" in found:
            sources = []
            for name in ("train", "val", "test"):
                if name not in found:
                    continue
                if len(found[name]) > 1:
                    files = ", ".join(p.name for p, _ in found[name])
                    raise DataError(f"{ann_dir}: several {name} annotation files ({files})")
                path, suffix = found[name][0]
                roots = (
                    root / f"{name}{suffix}",
                    root / name,
                    root / "images" / f"{name}{suffix}",
                    root / "images" / name,
                )
                sources.append(_Source(name, path, roots))
            return "coco", sources

    jsons = sorted(root.glob("*.json"))
    if len(jsons) == 1:
        return "single", [_Source("all", jsons[0], (root, root / "images"))]
    seen = ", ".join(p.name for p in jsons) or "none"
    raise DataError(
        f"{root}: no dataset layout found (looked for train.json + val.json, "
        f"annotations/instances_train*.json + annotations/instances_val*.json, or exactly one "
        f"*.json; *.json files there: {seen})"
    )


# --- reading and validating one annotation file ----------------------------------------------


@dataclass
class _File:
    path: Path
    raw_hash: str
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: dict[int, str]


def _read_json(path: Path) -> tuple[Any, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotation file ({exc.strerror})") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    return data, hashlib.sha256(raw).hexdigest()


# long: the rules of one annotation file in the order a reader checks them, each with its error
def _parse_file(path: Path, split: str) -> _File:
    data, raw_hash = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    # A test file may come without annotations (nothing to train on, nothing to check).
    optional = ("annotations",) if split == "test" else ()
    for key in ("images", "annotations", "categories"):
        if key not in data:
            if key in optional:
                continue
            raise DataError(f"{path}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    problems = _Problems(path)

    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        rec = _record("category", cat, i)
        if not isinstance(cat, dict):
            problems.add(rec, "must be an object")
            continue
        missing = [k for k in ("id", "name") if k not in cat]
        if missing:
            problems.add(rec, f"missing key '{missing[0]}'")
            continue
        cid = _as_int(cat["id"])
        if cid is None:
            problems.add(rec, f"id={cat['id']!r} must be an integer")
        elif not isinstance(cat["name"], str) or not cat["name"].strip():
            problems.add(rec, f"name={cat['name']!r} must be a non-empty string")
        elif cid in categories:
            problems.add(rec, "duplicate category id")
        else:
            categories[cid] = cat["name"]

    images: list[dict[str, Any]] = []
    seen_images: set[int] = set()
    for i, img in enumerate(data["images"]):
        rec = _record("image", img, i)
        if not isinstance(img, dict):
            problems.add(rec, "must be an object")
            continue
        missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
        if missing:
            problems.add(rec, f"missing key '{missing[0]}'")
            continue
        iid, width, height = _as_int(img["id"]), _as_int(img["width"]), _as_int(img["height"])
        if iid is None:
            problems.add(rec, f"id={img['id']!r} must be an integer")
        elif iid in seen_images:
            problems.add(rec, "duplicate image id")
        elif not isinstance(img["file_name"], str) or not img["file_name"]:
            problems.add(rec, f"file_name={img['file_name']!r} must be a non-empty string")
        elif width is None or height is None or width < 1 or height < 1:
            problems.add(rec, f"width/height {img['width']!r}x{img['height']!r} must be > 0")
        else:
            seen_images.add(iid)
            img["id"], img["width"], img["height"] = iid, width, height
            images.append(img)
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}

    annotations: list[dict[str, Any]] = []
    seen_anns: set[int] = set()
    for i, ann in enumerate(data.get("annotations", [])):
        rec = _record("annotation", ann, i)
        if not isinstance(ann, dict):
            problems.add(rec, "must be an object")
            continue
        missing = [k for k in ("id", "image_id", "category_id", "segmentation") if k not in ann]
        if missing:
            problems.add(rec, f"missing key '{missing[0]}'")
            continue
        aid, iid, cid = _as_int(ann["id"]), _as_int(ann["image_id"]), _as_int(ann["category_id"])
        if aid is None:
            problems.add(rec, f"id={ann['id']!r} must be an integer")
            continue
        if aid in seen_anns:
            problems.add(rec, "duplicate annotation id")
            continue
        seen_anns.add(aid)
        if cid is None or cid not in categories:
            problems.add(rec, f"category_id={ann['category_id']!r} is not a known category")
            continue
        if iid is None or iid not in sizes:
            problems.add(rec, f"image_id={ann['image_id']!r} is not a known image")
            continue
        if ann.get("iscrowd", 0) not in (0, 1):  # False/True compare equal to 0/1
            problems.add(rec, f"iscrowd={ann['iscrowd']!r} must be 0, 1, false or true")
            continue
        try:
            check_segmentation(ann["segmentation"], *sizes[iid])
        except MaskFormatError as exc:
            problems.add(rec, f"segmentation: {exc}")
            continue
        ann["id"], ann["image_id"], ann["category_id"] = aid, iid, cid
        annotations.append(ann)
    problems.raise_if_any()
    return _File(path, raw_hash, images, annotations, categories)


# --- image files -----------------------------------------------------------------------------


def _check_images(
    path: Path, image_root: Path, images: list[dict[str, Any]], open_files: bool
) -> None:
    problems = _Problems(path)
    real_root = image_root.resolve()
    missing: list[str] = []
    for img in images:
        rec = f"image id={img['id']}"
        file_name = img["file_name"]
        reason = escapes(file_name, image_root)
        if reason is not None:
            problems.add(rec, f"file_name={file_name!r} {reason}")
            continue
        # resolve() follows symlinks without opening anything: a link out of the folder stops here.
        target = (image_root / file_name).resolve()
        if not target.is_relative_to(real_root):
            problems.add(rec, f"file_name={file_name!r} resolves outside {image_root}")
            continue
        if not open_files:
            continue
        if not target.is_file():
            problems.add(rec, f"image file not found: {image_root / file_name}")
            missing.append(file_name)
            continue
        try:
            with Image.open(target) as im:  # reads the header only
                width, height = im.size
        except (OSError, UnidentifiedImageError) as exc:
            problems.add(rec, f"cannot read image {image_root / file_name} ({exc})")
            continue
        if (width, height) != (img["width"], img["height"]):
            problems.add(
                rec,
                f"{file_name} is {width}x{height} on disk but the JSON says "
                f"{img['width']}x{img['height']} (width x height)",
            )
    problems.raise_if_any(_missing_hint(path, image_root, missing, len(images)))


def _missing_hint(path: Path, image_root: Path, missing: list[str], total: int) -> str:
    # Most files missing and the first of them beside the JSON: say where the images seem to be.
    if not missing or 2 * len(missing) < total:
        return ""
    folder = images_elsewhere(path, image_root, missing[0])
    if folder is None:
        return ""
    return (
        f"; {len(missing)} of {total} image files are not under {image_root}; the images seem "
        f"to be in {folder}: pass --images {folder} (data.image_root)"
    )


# --- classes and splits ----------------------------------------------------------------------


def _class_map(files: list[_File]) -> tuple[list[str], dict[int, int]]:
    names: dict[int, str] = {}
    where: dict[int, Path] = {}
    for f in files:
        for cid, name in f.categories.items():
            if cid in names and names[cid] != name:
                raise DataError(
                    f"{f.path}: category id={cid}: name {name!r} differs from {names[cid]!r} "
                    f"in {where[cid]}"
                )
            names.setdefault(cid, name)
            where.setdefault(cid, f.path)
    class_names = ["background"]
    cat_to_class: dict[int, int] = {}
    owner: dict[str, int] = {}
    for cid in sorted(names):
        name = names[cid]
        if name.strip().lower() in BACKGROUND_NAMES:
            cat_to_class[cid] = 0
            continue
        if name in owner:
            raise DataError(
                f"{where[cid]}: category id={cid}: name {name!r} is also category id={owner[name]}"
            )
        owner[name] = cid
        cat_to_class[cid] = len(class_names)
        class_names.append(name)
    if len(class_names) > MAX_CLASSES - 1:
        raise DataError(f"{files[0].path}: {len(class_names)} classes, at most {MAX_CLASSES - 1}")
    return class_names, cat_to_class


def _make_split(name: str, f: _File, image_root: Path, images: list[dict[str, Any]]) -> CocoSplit:
    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in images}
    for ann in f.annotations:
        if ann["image_id"] in by_image:
            by_image[ann["image_id"]].append(ann)
    selection = json.dumps({"split": name, "image_ids": [img["id"] for img in images]})
    digest = hashlib.sha256(f"{f.raw_hash}\n{selection}".encode()).hexdigest()
    return CocoSplit(name, f.path, image_root, images, by_image, digest)


def split_ids(ids: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/val split of image ids, independent of their order in the file."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be strictly between 0 and 1")
    ordered = sorted(ids)
    n_val = min(len(ordered) - 1, max(1, round(len(ordered) * val_fraction)))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    val = {ordered[i] for i in perm[:n_val].tolist()}
    return [i for i in ordered if i not in val], [i for i in ordered if i in val]


def load_coco(
    root: Path | str,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    check_images: bool = True,
    image_root: Path | str | None = None,
) -> CocoDataset:
    """Detect the layout of ``root``, validate everything and return the splits.

    ``image_root`` (``data.image_root``, ``--images``): every split's ``file_name`` is relative
    to this folder instead of the layout's own. ``check_images=False`` skips opening image files
    (existence and size); paths are still checked to stay inside the image folder.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset root does not exist")
    layout, sources = _detect_layout(root)
    images = Path(image_root) if image_root is not None else None
    if images is not None:
        if not images.is_dir():
            what = "is not a folder" if images.exists() else "does not exist"
            raise DataError(f"{images}: image folder (--images, data.image_root) {what}")
        sources = [_Source(src.name, src.ann_path, (images,)) for src in sources]
    files = [_parse_file(src.ann_path, src.name) for src in sources]
    class_names, cat_to_class = _class_map(files)

    splits: dict[str, CocoSplit] = {}
    for src, f in zip(sources, files, strict=True):
        image_root = pick_image_root(src.image_roots, f.images)
        if image_root is None:
            looked = ", ".join(str(p) for p in src.image_roots)
            raise DataError(f"{src.ann_path}: no image folder found (looked for {looked})")
        _check_images(f.path, image_root, f.images, check_images)
        if layout != "single":
            splits[src.name] = _make_split(src.name, f, image_root, f.images)
            continue
        if len(f.images) < 2:
            raise DataError(
                f"{f.path}: {len(f.images)} image(s); a single annotation file needs at least 2 "
                "to split into train and val"
            )
        by_id = {img["id"]: img for img in f.images}
        train_ids, val_ids = split_ids(list(by_id), val_fraction, split_seed)
        splits["train"] = _make_split("train", f, image_root, [by_id[i] for i in train_ids])
        splits["val"] = _make_split("val", f, image_root, [by_id[i] for i in val_ids])
    return CocoDataset(root, layout, class_names, cat_to_class, splits, images)
