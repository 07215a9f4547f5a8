"""The checks that make silent training bugs visible.

    audit      the param-group audit: every trainable parameter in exactly one optimiser group
    updates    the update monitor: did every module that should train move?
    learning   the learning check: did a finished trial learn anything?
    pairing    the mask pairing check: do the masks belong to their images?
    outliers   the study-level detector: a trial far below what its neighbours predict
    flags      the names of what they find

They depend on torch and the model only, never on the rest of the harness's training code.
"""

from harness.checks.audit import AuditReport, Finding, ModuleRow, audit_param_groups, audit_table

__all__ = ["AuditReport", "Finding", "ModuleRow", "audit_param_groups", "audit_table"]
