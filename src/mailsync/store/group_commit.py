"""The fetch's pages, committed in groups: one transaction for every campaign a process
fetches at once, committed every `COMMIT_PAGES` pages, `COMMIT_SECONDS` after its first page,
and whenever a campaign's walk ends.

A commit per page wrote the pages of the events' and the ledger's random-keyed indexes to
the WAL again on every page: the fetch's commits were about 7 % of a sync's own CPU (py-spy,
10,000 events; the grouped fetch is bench/RESULTS.md section 3's figure). Grouping keeps
what the crash guarantees need: a page is stored whole or not at all (a savepoint), and a
walk's bookmark moves only in the commit that holds its last page, so a crash loses at most
the pages not committed yet, which the next run reads again (a walk stops only at a page
that is all stored).

SQLite has one writer, so the campaigns of a process share this one session, in turn (a lock;
a Prefect worker fetches them in threads): a transaction of their own held across the wait for
Postalytics would make the others wait for it, fetching one campaign at a time. Other
processes (the webhook receiver, another sync) wait at most `COMMIT_SECONDS` for the write
lock: a timer on the loop of the page that opened the transaction commits it while the fetch
awaits Postalytics.

A commit that fails loses the pages of every campaign in it: each of them raises that error
at its next page or at its end, and none reports pages stored that are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailsync.store.ops import begin_writing, savepoint

log = logging.getLogger("mailsync.store")

COMMIT_PAGES = 10
"""Pages (of any campaign) in one commit at most: about 1,000 events and their ledger rows."""
COMMIT_SECONDS = 1.0
"""How long the write lock is held at most while the fetch waits for Postalytics (which
serves 3 pages a second: a group is then about 3 pages)."""


@dataclass(eq=False)
class CampaignWrites:
    """One campaign's way into the shared transaction."""

    group: _Group
    lost: BaseException | None = None
    """Why pages of this campaign stored in the transaction were lost (its commit failed)."""

    def page(self) -> contextlib.AbstractContextManager[Session]:
        """The session for one page's writes, kept whole or not at all."""
        return self.group.page(self)

    def commit(self) -> None:
        """Make this campaign's pages durable now (its walk's end), or raise why they were
        lost."""
        with self.group.lock:
            self.check()
            self.group.commit()

    def check(self) -> None:
        """Raise the error that lost this campaign's uncommitted pages, if one did."""
        if self.lost is not None:
            raise self.lost


@dataclass(eq=False)
class _Group:
    session: Session
    dry_run: bool = False
    members: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    dirty: set[CampaignWrites] = field(default_factory=set)
    pages: int = 0
    generation: int = 0
    """Counts commits: a timer set for an earlier transaction finds it gone and does nothing."""

    @contextlib.contextmanager
    def page(self, member: CampaignWrites) -> Iterator[Session]:
        with self.lock:
            member.check()
            if self.dry_run:  # each page rolled back: nothing waits to be committed
                try:
                    yield self.session
                finally:
                    self.session.rollback()
                return
            yield from self._stored_page(member)

    def _stored_page(self, member: CampaignWrites) -> Iterator[Session]:
        begin_writing(self.session)
        try:
            with savepoint(self.session):
                yield self.session
        except BaseException as exc:
            if not self._usable():
                self._lose(exc)
            raise
        self.dirty.add(member)
        self.pages += 1
        if self.pages >= COMMIT_PAGES:
            self.commit()
        elif self.pages == 1:
            self._commit_later()

    def _commit_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the page count and the walk's end commit
            return
        loop.call_later(COMMIT_SECONDS, self._due, self.generation)

    def commit(self) -> None:
        with self.lock:
            if self.dry_run:
                return
            self.generation += 1
            try:
                self.session.commit()
            except BaseException as exc:
                self._lose(exc)
                raise
            self.dirty, self.pages = set(), 0

    def _due(self, generation: int) -> None:
        with self.lock:
            if generation != self.generation or not self.dirty:
                return
            try:
                self.commit()
            except Exception as exc:  # the campaigns whose pages it held raise it (`lost`)
                log.debug("a timed commit of fetched pages failed: %s", exc)

    def _usable(self) -> bool:
        txn = self.session.get_transaction()
        return txn is None or txn.is_active

    def _lose(self, exc: BaseException) -> None:
        for member in self.dirty:
            member.lost = exc
        self.dirty, self.pages = set(), 0
        self.generation += 1
        with contextlib.suppress(Exception):
            self.session.rollback()

    def leave(self, failed: bool) -> None:
        """A campaign is done. One that failed commits what the others stored (its timer may
        be on its loop, which is ending); the last one out closes the session."""
        with self.lock:
            self.members -= 1
            try:
                if failed or self.members == 0:
                    self.commit()
            except Exception:
                if not failed:
                    raise
                # The campaign is failing already: its error is the one to report; the
                # others raise this one (`lost`), and the next run reads the pages again.
                log.debug("a commit of fetched pages failed", exc_info=True)
            finally:
                if self.members == 0:
                    self.session.close()


_groups: dict[Engine, _Group] = {}
_groups_lock = threading.Lock()


@contextlib.contextmanager
def campaign_writes(engine: Engine, dry_run: bool = False) -> Iterator[CampaignWrites]:
    """A campaign's writes into the process's shared transaction on this store (in a dry
    run, a session of its own, rolled back after every page)."""
    with _groups_lock:
        group = None if dry_run else _groups.get(engine)
        if group is None:
            group = _Group(Session(engine, expire_on_commit=False), dry_run)
            if not dry_run:
                _groups[engine] = group
        group.members += 1
    failed = True
    try:
        yield CampaignWrites(group)
        failed = False
    finally:
        with _groups_lock:
            if group.members == 1 and _groups.get(engine) is group:
                del _groups[engine]
            group.leave(failed)
