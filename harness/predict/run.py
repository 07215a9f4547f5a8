"""``predict``: every refusal first, then one pass over the split (predict, score, write), and
the record of what was done (``predict.json``)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness import __version__
from harness.config import TrialConfig
from harness.data.coco import CocoSplit
from harness.data.transforms import IGNORE_INDEX
from harness.files import atomic_write, dumps
from harness.fit.loop import autocast, resolve_device
from harness.fit.runtime import amp_dtype, auto_num_workers
from harness.metrics import SegMetrics
from harness.predict.inputs import (
    FORMATS,
    MASK_DIR,
    Checkpoint,
    PredictError,
    PredictSet,
    build_checkpoint_model,
    check_model_named,
    check_tta,
    class_mismatch,
    collate,
    has_truth,
    load_run_checkpoint,
    load_split,
    mask_names,
    parse_formats,
    resolve_data,
)
from harness.predict.outputs import CSV_NAME, SUBMISSION_SIZE, Outputs
from harness.progress import bar

RECORD_NAME = "predict.json"


@dataclass
class _Predictor:
    model: nn.Module
    device: torch.device
    tta: str
    amp: str | None  # the autocast dtype, as the trainer evaluated
    channels_last: bool

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(plain logits, the logits to write) at the model's input size, float32."""
        x = images.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            plain = self.model(x).float()
            if self.tta != "flip":
                return plain, plain
            flipped = self.model(x.flip(-1)).float().flip(-1)
        return plain, (plain + flipped) / 2


@dataclass
class PredictResult:
    out: Path
    split: str
    n_images: int
    checkpoint: Checkpoint
    data_root: Path
    truth: bool
    tta: str
    metrics: dict[str, float]  # trainer-way mIoU (+ with TTA), full-resolution mIoU
    files: list[str]  # written, relative to out


def _check_free(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise PredictError(
            f"{out}: already exists, and predictions never overwrite it; choose another --out "
            "or remove that folder"
        )


def _create_out(out: Path) -> None:
    _check_free(out)
    out.mkdir(parents=True)


def _run(
    ckpt: Checkpoint,
    split: CocoSplit,
    loader: DataLoader,
    predictor: _Predictor,
    outputs: Outputs,
    truth: bool,
    progress: bool,
) -> dict[str, float]:
    """One pass over the split: predict, score, write each image, in that order."""
    n = len(ckpt.class_names)
    trainer, trainer_tta, full = (SegMetrics(n, IGNORE_INDEX) for _ in range(3))
    with bar(len(split), f"predict {split.name}", enabled=progress) as advance:
        for batch in loader:
            plain, logits = predictor(batch["image"])
            if truth:
                trainer.update(batch["mask"], plain.argmax(1).cpu())
                trainer_tta.update(batch["mask"], logits.argmax(1).cpu())
            for j, index in enumerate(batch["index"]):
                h, w = batch["size"][j]
                up = logits[j : j + 1]
                if up.shape[-2:] != (h, w):
                    up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
                mask = up[0].argmax(0).to(torch.uint8).cpu().numpy()
                if truth:
                    full.update(
                        torch.from_numpy(batch["full"][j])[None], torch.from_numpy(mask)[None]
                    )
                outputs.add(index, mask)
            advance(len(batch["index"]))
    if not truth:
        return {}
    metrics = {
        f"{split.name}/mIoU": _miou(trainer),
        f"{split.name}/mIoU_full_resolution": _miou(full),
    }
    if predictor.tta != "none":
        metrics[f"{split.name}/mIoU_tta_{predictor.tta}"] = _miou(trainer_tta)
    return metrics


def _miou(metrics: SegMetrics) -> float:
    value = metrics.compute()["mIoU"]
    assert isinstance(value, float)
    return value


# long: every refusal first (checkpoint, options, data, classes, output folder), then one pass
def predict(
    target: Path | str,
    *,
    data: Path | str | None = None,
    split: str = "test",
    images: Path | str | None = None,
    out: Path | str | None = None,
    formats: str | Sequence[str] = FORMATS,
    tta: str | None = "none",
    batch_size: int | None = None,
    device: str | None = None,
    progress: bool = True,
    on_start: Callable[[str], None] | None = None,
    model: str | None = None,
) -> PredictResult:
    """Predict ``split`` with the checkpoint of a run (folder or ``best.pt``) into ``out``
    (default ``<run folder>/predict-<split>/``). ``on_start`` gets one line once all is checked.
    ``model``: the user model factory the checkpoint was trained with, named by the user (a
    checkpoint with a user model is refused without it: its config is not trusted to import)."""
    ckpt = load_run_checkpoint(target)
    check_model_named(ckpt, model)
    fmt = parse_formats(formats)
    mode = check_tta(tta)
    if batch_size is not None and batch_size < 1:
        raise PredictError(f"--batch-size={batch_size}: must be >= 1")
    cfg = ckpt.cfg
    folder = Path(out) if out is not None else ckpt.run_dir / f"predict-{split}"
    _check_free(folder)  # before the data is read: a refusal should come fast
    dev = resolve_device(device or cfg.train.device, "--device" if device else "train.device")
    root, image_root = resolve_data(cfg, data, images)
    coco, chosen = load_split(cfg, root, image_root, split)
    diff = class_mismatch(ckpt.class_names, coco.class_names)
    if diff is not None:
        raise PredictError(f"class lists differ ({ckpt.path} vs {root}): {diff}")
    if len(chosen) == 0:
        raise PredictError(f"--split={split!r}: {chosen.ann_path} holds no images")
    mask_names(chosen)  # refuse clashing PNG names before anything is written
    net = build_checkpoint_model(ckpt, dev)
    truth = has_truth(chosen)
    loader = DataLoader(
        PredictSet(chosen, coco, cfg, truth),
        batch_size=batch_size or cfg.train.batch_size,
        shuffle=False,
        # the run's own setting, or the auto value the trainer would pick on this device
        num_workers=(
            cfg.data.num_workers
            if cfg.data.num_workers is not None
            else auto_num_workers(dev.type, torch.get_num_threads())
        ),
        collate_fn=collate,
    )
    predictor = _Predictor(
        net,
        dev,
        mode,
        amp=amp_dtype(
            cfg.train.amp,
            cuda=dev.type == "cuda",
            bf16=dev.type == "cuda" and torch.cuda.is_bf16_supported(),
        ),
        channels_last=cfg.train.channels_last and dev.type == "cuda",
    )
    _create_out(folder)
    if on_start is not None:
        epoch = f"epoch {ckpt.epoch}" if ckpt.epoch is not None else "epoch ?"
        on_start(
            f"predict: {ckpt.path} ({epoch}), split {split} of {root}: {len(chosen)} images "
            f"-> {folder}"
        )
    outputs: Outputs | None = None
    try:
        outputs = Outputs(folder, fmt, chosen, len(ckpt.class_names))
        metrics = _run(ckpt, chosen, loader, predictor, outputs, truth, progress)
        outputs.close(complete=True)
        files = _written(folder, fmt, chosen)
        result = PredictResult(folder, split, len(chosen), ckpt, root, truth, mode, metrics, files)
        _write_record(result, cfg, dev, fmt)
    except BaseException:
        if outputs is not None:
            outputs.close(complete=False)
        shutil.rmtree(folder, ignore_errors=True)  # created above, by this call
        raise
    return result


def _written(out: Path, formats: tuple[str, ...], split: CocoSplit) -> list[str]:
    files = [CSV_NAME] if "csv" in formats else []
    if "png" in formats:
        files += [f"{MASK_DIR}/{name}" for name in mask_names(split)]
    return files


def _write_record(
    result: PredictResult, cfg: TrialConfig, device: torch.device, formats: tuple[str, ...]
) -> None:
    record = {
        "harness_version": __version__,
        "checkpoint": str(result.checkpoint.path),
        "epoch": result.checkpoint.epoch,
        "recorded_val_mIoU": result.checkpoint.val_miou,
        "data": str(result.data_root),
        "split": result.split,
        "n_images": result.n_images,
        "annotated": result.truth,
        "class_names": result.checkpoint.class_names,
        "image_size": cfg.data.image_size,
        "tta": result.tta,
        "formats": list(formats),
        "device": str(device),
        "png": "palette PNG at each image's own size, pixel value = class index; logits "
        "upsampled bilinearly to the image size before argmax",
        "csv": f"{CSV_NAME}: image_id = file_name, PredictionString = the PNG's mask resized to "
        f"{SUBMISSION_SIZE}x{SUBMISSION_SIZE} with cv2.INTER_NEAREST, row-major, space-separated",
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()},
    }
    path = result.out / RECORD_NAME
    text = dumps(record, indent=2) + "\n"

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)
    result.files.append(RECORD_NAME)


def metric_lines(result: PredictResult, size: int) -> list[str]:
    """What the CLI prints about the scores; empty for a split without annotations."""
    if not result.truth:
        return []
    split, m = result.split, result.metrics
    main = m[f"{split}/mIoU"]
    line = f"{split}/mIoU {main:.6f} (as the trainer computes it: at {size}x{size}, masks resized"
    line += " nearest, no TTA"
    recorded = result.checkpoint.val_miou
    if split == "val" and recorded is not None:
        line += f"; best.pt recorded {recorded:.6f})"
    else:
        line += ")"
    lines = [line]
    if split == "val" and recorded is not None and not math.isclose(main, recorded, abs_tol=1e-6):
        lines.append(
            f"WARNING {split}/mIoU differs from the {recorded:.6f} best.pt recorded: the data, "
            "its split or the device differ from the run's"
        )
    key = f"{split}/mIoU_tta_{result.tta}"
    if key in m:
        lines.append(f"{split}/mIoU with --tta {result.tta} {m[key]:.6f} (the same way)")
    lines.append(
        f"{split}/mIoU at full resolution {m[f'{split}/mIoU_full_resolution']:.6f} (the written "
        "masks against each image's own mask)"
    )
    return lines
