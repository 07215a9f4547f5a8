"""Old home of the param-group audit, kept importable: use ``harness.checks`` instead."""

from harness.checks.audit import AuditReport, Finding, ModuleRow, audit_param_groups, audit_table

__all__ = ["AuditReport", "Finding", "ModuleRow", "audit_param_groups", "audit_table"]
