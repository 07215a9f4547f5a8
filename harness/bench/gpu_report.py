"""The GPU check's entry point and its report: a readable table on the console and in
``gpu-check.txt``, every figure in ``gpu-check.json`` (``harness bench --only gpu --out DIR``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.bench.gpu import (
    CheckSettings,
    Comparison,
    GpuReport,
    Utilisation,
    check_settings,
    run_check,
)
from harness.bench.unpool import RTOL
from harness.files import atomic_write_bytes, dumps

JSON_NAME = "gpu-check.json"
TEXT_NAME = "gpu-check.txt"


def _gib(n: int | None) -> str:
    return "n/a (CPU)" if n is None else f"{n / 2**30:.2f} GiB"


def _verdict(passed: bool | None) -> str:
    return "" if passed is None else ("PASS" if passed else "FAIL")


def _comparison_row(c: Comparison) -> tuple[str, str, str]:
    result = (
        f"{c.test.label} {c.test.img_per_s:.1f} img/s vs {c.base.label} {c.base.img_per_s:.1f} "
        f"img/s -> ratio {c.ratio:.3f}"
    )
    target = f">= {c.target}  {_verdict(c.passed)}" if c.target is not None else ""
    return c.name, result, target


def _header(r: GpuReport) -> list[str]:
    env, s = r.environment, r.settings
    model = "paper-size DeconvNet" if s["paper_size"] else "small DeconvNet (smoke run)"
    rt = s["runtime"]
    return [
        f"GPU check: {env['device']}",
        f"  torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"Python {env['python']}, {env['cpu_threads']} CPU threads",
        f"  {model}: width {s['width']}, fc6 {s['fc_channels']} ch / kernel {s['fc_kernel']}, "
        f"{s['num_params'] / 1e6:.1f}M parameters, {s['image_size']}x{s['image_size']}, "
        f"batch {s['batch_size']}, Adam, random weights",
        f"  fit's settings: autocast {rt['amp'] or 'off'}, channels_last {rt['channels_last']}, "
        f"cudnn.benchmark {rt['cudnn_benchmark']}, loader workers {rt['num_workers']}, pin_memory "
        f"{rt['pin_memory']}; cudnn.allow_tf32 {env['cudnn_allow_tf32']}",
        f"  fit vs bare: {s['rounds']} alternating rounds of {s['epochs']} epochs (first epoch of "
        f"each: warm-up); precision: {s['warmup_steps']} warm-up steps, {s['rounds']} rounds "
        f"of {s['timed_steps']} steps on one fixed batch",
    ]


def utilisation_rows(
    utilisation: Sequence[Utilisation], environment: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """One row per MFU figure; a device without a known peak says so, no number is made up."""
    peak_name = (environment.get("peak") or {}).get("name", "")
    rows = []
    for u in utilisation:
        if u.mfu is None:
            where = "CPU" if environment["device_type"] == "cpu" else "this device"
            of = f"peak unknown for {where}: no MFU"
        else:
            of = f"MFU {u.mfu:.1%} of {u.peak_tflops:g} ({peak_name} {u.math} dense)"
        result = f"{u.step_s * 1e3:.1f} ms/step, {u.tflops:.3g} TFLOP/s; {of}"
        rows.append((f"MFU {u.label}", result, ""))
    return rows


def format_report(r: GpuReport) -> str:
    """The table a developer reads: one row per figure, its target and PASS/FAIL."""
    un = r.unpool
    ties = sum(p.tied_indices for p in un.pools)
    bad = sum(p.mismatched_indices for p in un.pools)
    worst = max((max(p.pooled_rel_diff, p.unpooled_rel_diff) for p in un.pools), default=0.0)
    rows = [
        _comparison_row(r.fit_vs_bare),
        _comparison_row(r.precision),
        _comparison_row(r.loader),
        ("FLOPs per training step", f"{r.step_flops / 1e12:.4g} TFLOP (forward + backward)", ""),
        *utilisation_rows(r.utilisation, r.environment),
        (
            f"MaxUnpool2d {un.setting} vs fp32",
            f"{len(un.pools)} pools: {bad} index mismatches, {ties} ties, largest rel. diff "
            f"{worst:.2e} (tolerance {RTOL:.2e})",
            _verdict(un.passed),
        ),
        (
            "peak memory",
            f"fit {_gib(r.fit_vs_bare.test.peak_memory_bytes)}, bare loop "
            f"{_gib(r.fit_vs_bare.base.peak_memory_bytes)}, {r.precision.test.label} "
            f"{_gib(r.precision.test.peak_memory_bytes)}, {r.precision.base.label} "
            f"{_gib(r.precision.base.peak_memory_bytes)}",
            "",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [*_header(r), ""]
    lines += [f"{name:<{width}}  {result}  {target}".rstrip() for name, result, target in rows]
    verdict = "PASS" if r.passed else "FAIL"
    # name each check's own verdict: "FAIL: fit vs bare and MaxUnpool2d" read as both failing
    fit, unpool = _verdict(r.fit_vs_bare.passed), _verdict(r.unpool.passed)
    checks = f"fit vs bare {fit}, MaxUnpool2d {unpool}"
    lines += ["", f"{verdict} ({checks}); {r.wall_s:.0f}s in all"]
    return "\n".join(lines) + "\n"


def write_report(r: GpuReport, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, text_path = out / JSON_NAME, out / TEXT_NAME
    atomic_write_bytes(json_path, (dumps(r.to_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(text_path, format_report(r).encode())
    return json_path, text_path


def run_gpu_check(
    device: str = "cuda",
    quick: bool = False,
    out: Path | None = None,
    console: Console | None = None,
    settings: CheckSettings | None = None,
) -> GpuReport:
    """``harness bench --only gpu``: progress lines, then the table; the files with ``out``."""
    console = console or Console(highlight=False)
    start = time.perf_counter()

    def say(text: str) -> None:
        console.print(f"gpu-check [{time.perf_counter() - start:5.0f}s] {text}", soft_wrap=True)

    report = run_check(settings or check_settings(device, quick), say)
    console.print(format_report(report), soft_wrap=True, markup=False)
    if out is not None:
        for path in write_report(report, out):
            say(f"wrote {path}")
    return report
