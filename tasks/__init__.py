"""Prefect tasks: each wraps one mailsync library step at batch granularity."""

from tasks.secrets import prefect_secret_resolver

__all__ = ["prefect_secret_resolver"]
