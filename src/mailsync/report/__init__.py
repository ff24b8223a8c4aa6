"""Reconciliation reports: what was missed or rejected, why, and what to do; and verify."""
