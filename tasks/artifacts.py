"""Prefect artifacts for a run: markdown summary, tables of problem writes, apply progress.

Keys are stable (the UI shows an artifact's history under its key) and hold only lowercase
letters, digits and dashes, as Prefect requires. Every text goes through `redact`, so a
token echoed in an error message never reaches the Prefect API.

Tasks compose a run's artifacts (`RunArtifacts`) and return them; the flow publishes them
(`publish`), so they belong to the flow run itself: Prefect files an artifact under the
task run it was created in, and support looks for a run's report on the flow run's page.
Only the progress of a location's apply stays with its task.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from mailsync.redact import redact
from mailsync.report.safe import clip, md_text, visible

log = logging.getLogger("mailsync.artifacts")

MAX_TABLE_ROWS = 500
"""Rows per table artifact: keeps each one well under the API's request size limit."""
MAX_CELL = 300
"""Characters per table cell (reasons can quote whole response bodies)."""


def artifact_key(*parts: str) -> str:
    """A valid, stable artifact key from free text (e.g. a location id).

    Lowercasing and replacing characters can make two ids collide (`AbC` and `abc`), so a
    short hash of the original is appended whenever the text had to change.
    """
    raw = "-".join(parts)
    key = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")
    if key != raw:
        key = f"{key}-{hashlib.sha1(raw.encode()).hexdigest()[:6]}"
    return key or "mailsync"


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    # The UI renders table cells as markdown: outside text is escaped to stay text (a
    # name's `<b>`, a `[link](javascript:..)`), control characters shown, long reasons cut.
    return md_text(clip(visible(redact(value)), MAX_CELL))


def table_chunks(rows: Sequence[Mapping[str, Any]],
                 size: int = MAX_TABLE_ROWS) -> list[list[dict[str, Any]]]:
    """Rows split into chunks of at most `size`, cells redacted and shortened."""
    clean = [{k: _cell(v) for k, v in row.items()} for row in rows]
    return [clean[i:i + size] for i in range(0, len(clean), size)]


async def publish_table(key: str, rows: Sequence[Mapping[str, Any]],
                        description: str) -> list[str]:
    """Create one table artifact per chunk: `key`, `key-part-2`, ...; returns the keys used.

    An empty table is still published (one artifact saying so), so the key's history shows
    that a run had no problems rather than leaving the previous run's table on top.
    """
    from prefect.artifacts import acreate_table_artifact

    chunks = table_chunks(rows) or [[]]
    keys = []
    for i, chunk in enumerate(chunks, 1):
        k = key if i == 1 else f"{key}-part-{i}"
        part = f" (part {i} of {len(chunks)})" if len(chunks) > 1 else ""
        await acreate_table_artifact(chunk, key=k, description=redact(description + part))
        keys.append(k)
    return keys


async def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Create a markdown artifact, redacted."""
    from prefect.artifacts import acreate_markdown_artifact

    await acreate_markdown_artifact(redact(markdown), key=key,
                                    description=redact(description))


@dataclass(frozen=True)
class TableArtifact:
    """A table to publish under `key` (split in parts of `MAX_TABLE_ROWS`)."""

    key: str
    rows: list[dict[str, Any]]
    description: str


@dataclass(frozen=True)
class MarkdownArtifact:
    """A markdown text to publish under `key` (its outside values already escaped)."""

    key: str
    markdown: str
    description: str


@dataclass
class RunArtifacts:
    """What a task composed for its flow run to publish, and the result it reports."""

    result: dict[str, Any]
    markdown: list[MarkdownArtifact] = field(default_factory=list)
    tables: list[TableArtifact] = field(default_factory=list)


async def publish(artifacts: RunArtifacts) -> dict[str, Any]:
    """Create the artifacts; await it in the flow itself, so they are the flow run's.

    An artifact Prefect refuses (API down, too large) is logged, never fatal: the ledger,
    not the artifact, is the record. Returns the task's result.
    """
    for md in artifacts.markdown:
        try:
            await publish_markdown(md.key, md.markdown, md.description)
        except Exception as exc:
            log.warning("artifact %s not created: %s", md.key, redact(exc))
    for table in artifacts.tables:
        try:
            await publish_table(table.key, table.rows, table.description)
        except Exception as exc:
            log.warning("artifact %s not created: %s", table.key, redact(exc))
    return artifacts.result


def start_progress(location_id: str, description: str) -> UUID | None:
    """A progress artifact at 0 % for one location's apply (None if Prefect refused it)."""
    from prefect.artifacts import create_progress_artifact

    try:
        return create_progress_artifact(0.0, key=artifact_key("mailsync-progress", location_id),
                                        description=redact(description))
    except Exception as exc:  # progress is a convenience: never fail an apply over it
        log.warning("progress artifact for %s not created: %s", location_id, redact(exc))
        return None


@contextlib.asynccontextmanager
async def progress_client() -> AsyncIterator[Any]:
    """A Prefect API client for one apply's progress updates, or None if none can be
    opened (each update then opens its own): progress never fails an apply."""
    from prefect import get_client

    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(get_client())
        except Exception as exc:
            log.warning("progress client not opened: %s", redact(exc))
            client = None
        yield client


async def update_progress(artifact_id: UUID | None, percent: float,
                          client: Any = None) -> None:
    """Move a progress artifact (awaited inside the apply's event loop, with the apply's
    `progress_client()`; errors only logged)."""
    from prefect.artifacts import aupdate_progress_artifact

    if artifact_id is None:
        return
    try:
        await aupdate_progress_artifact(artifact_id, max(0.0, min(100.0, percent)),
                                        client=client)
    except Exception as exc:
        log.warning("progress artifact not updated: %s", redact(exc))
