"""The HTML reports: the study report (``harness report``) and the EDA report (``harness eda``).

Both are single self-contained pages (charts inlined as base64 PNGs, inline CSS) drawn with
matplotlib's Agg backend.
"""

import os
import tempfile
from pathlib import Path

# matplotlib writes its font cache to ~/.cache unless told otherwise; keep $HOME clean. Set here,
# before any report module imports matplotlib.
if "MPLCONFIGDIR" not in os.environ:
    _uid = getattr(os, "getuid", lambda: 0)()
    os.environ["MPLCONFIGDIR"] = str(Path(tempfile.gettempdir()) / f"harness-matplotlib-{_uid}")
