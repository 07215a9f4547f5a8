"""``harness predict``: a run's ``best.pt`` on one split of a dataset, written as the competition's
submission CSV and one palette PNG per image.

What is predicted, and how (the choices, so that a reader can check them):

- the model sees each image as the trainer's val transforms make it: resized to the run's
  ``data.image_size`` squared (aspect ratio not kept), ImageNet-normalised;
- its logits are upsampled **bilinearly** to the image's own height and width, then argmax'd: the
  PNG is at the image's own size. Upsampling the logits rather than the argmax'd mask gives
  smooth object borders instead of blocks of ``H/image_size`` pixels (torchvision's and
  MMSegmentation's inference resize the logits the same way);
- ``--tta flip`` averages the logits of the image and of its horizontal flip (flipped back),
  before the upsampling;
- the CSV row is that full-size mask resized to 256x256 with **nearest neighbour**
  (``cv2.INTER_NEAREST``, what the course baseline's ``A.Resize(256, 256)`` does to a mask),
  flattened row-major, class indices separated by spaces; one row per image, in the annotation
  file's order, ``image_id`` = the image's ``file_name``;
- on a split with annotations, ``<split>/mIoU`` is computed exactly as the trainer does (logits
  at ``image_size`` against the masks resized nearest by the val transforms, one confusion matrix
  over the split, no TTA), so on ``--split val`` it equals the val mIoU the run recorded for this
  checkpoint; the mIoU of the written masks against the masks at each image's own size is
  reported separately and named so.

Nothing is written outside the output folder: masks are decoded in memory (not into the mask
cache) and the built-in dataset is read, never generated. The output folder must not exist; a
failed run removes the folder it created.
"""

from harness.predict.inputs import (
    FORMATS,
    MASK_DIR,
    TTA_MODES,
    Checkpoint,
    PredictError,
    class_mismatch,
    load_run_checkpoint,
)
from harness.predict.outputs import (
    CSV_HEADER,
    CSV_NAME,
    SUBMISSION_SIZE,
    read_submission,
    submission_mask,
)
from harness.predict.run import RECORD_NAME, PredictResult, metric_lines, predict

__all__ = [
    "CSV_HEADER",
    "CSV_NAME",
    "FORMATS",
    "MASK_DIR",
    "RECORD_NAME",
    "SUBMISSION_SIZE",
    "TTA_MODES",
    "Checkpoint",
    "PredictError",
    "PredictResult",
    "class_mismatch",
    "load_run_checkpoint",
    "metric_lines",
    "predict",
    "read_submission",
    "submission_mask",
]
