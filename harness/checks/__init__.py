"""The checks that make silent training bugs visible.

    audit      the param-group audit: every trainable parameter in exactly one optimiser group
    updates    the update monitor: did every module that should train move?
    modes      the mode check: BatchNorm/Dropout left in eval mode while the model trains
    watch      all of them in any training loop: ``watch(model, optimizer)``
    learning   the learning check: did a finished trial learn anything?
    pairing    the mask pairing check: do the masks belong to their images?
    outliers   the study-level detector: a trial far below what its neighbours predict
    flags      the names of what they find

They depend on torch and the model only, never on the rest of the harness's training code. The
public API for any training loop: ``audit_param_groups``, ``audit``, ``watch``/``Watch``.
"""

from harness.checks.audit import (
    AuditError,
    AuditReport,
    Finding,
    ModuleRow,
    audit,
    audit_param_groups,
    audit_table,
)
from harness.checks.watch import Watch, watch

__all__ = [
    "AuditError",
    "AuditReport",
    "Finding",
    "ModuleRow",
    "Watch",
    "audit",
    "audit_param_groups",
    "audit_table",
    "watch",
]
