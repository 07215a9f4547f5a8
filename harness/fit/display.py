"""What ``fit`` prints: the audit table with its warnings, and one line per epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from harness.checks.audit import AuditReport, audit_table
from harness.config import TrialConfig
from harness.optim import frozen_modules


def print_audit(
    console: Console, cfg: TrialConfig, audit: AuditReport, evidence: dict[str, str], verbose: bool
) -> None:
    """The audit table and its warnings; off ``verbose``, only when there is something to see."""
    problems = {f: t for f, t in evidence.items() if not f.startswith("audit:")}
    if not verbose and audit.ok and not problems:
        return
    console.print(audit_table(audit))
    if not cfg.train.audit:
        console.print("param-group audit: off (train.audit=false), no findings raised")
    for finding in audit.findings:
        console.print(f"[bold red]WARNING[/] param-group audit: {finding.message}", soft_wrap=True)
    for flag, text in problems.items():
        console.print(f"[bold red]WARNING[/] {flag}: {text}", soft_wrap=True)
    if verbose:
        for name in frozen_modules(cfg.optim):
            console.print(f"{name}: frozen on purpose (f_lr=0), not a finding")


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train/loss {row['train/loss']:.4f}  "
        f"val/loss {row['val/loss']:.4f}  val/mIoU {row['val/mIoU']:.4f}  "
        f"val/pixel_acc {row['val/pixel_acc']:.4f}  {row['time/epoch_s']:.1f}s  "
        f"{row['time/train_img_per_s']:.1f} img/s"
    )
