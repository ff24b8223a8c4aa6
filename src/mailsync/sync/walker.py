"""Which page of a campaign's events to read next: a pure decision, no HTTP, no database.

Postalytics pages events by offset, newest first, with no cursor and no "since" filter. The
walker is fed what each page held and answers the next page to ask (number and size), or
stops with the reason:

- from the top it reads down until a page is all already stored and its oldest event is older
  than the lookback cutoff (`caught_up`: below it every event is older still, and settled), or
  the list ends (`ended`), or the run's page cap is reached (`capped`, with the offset
  covered, where the next run resumes). Both conditions, so a server whose order is not quite
  by date still stops only past the events new since the last run;
- resuming after a cap, it reads the new top, and at the first page already stored jumps to
  where the capped walk stopped, moved down by the events added since, one page early so a
  miscount repeats events rather than skips them;
- a page shorter than asked is the end only at a size the server has been seen to serve in
  full. After a short first page it asks the next at the size served: whether the server's
  offset is (PageNumber-1)*PageSize or (PageNumber-1)*its own cap, both agree then;
- when a page repeated events read earlier in the walk, events arrived meanwhile and pushed
  the pages down: after a complete walk it re-reads the top until a page brings nothing new.
  (Events arriving after the last page are at the top for the next run.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum

PAGE_SIZE = 100
"""Postalytics' maximum PageSize."""
RESCAN_PAGES = 5
"""At most this many pages re-read at the top after a walk; the next run reads the rest."""


class Stop(StrEnum):
    """Why a walk stopped."""

    ended = "ended"
    """The list ran out: a page shorter than a size the server serves in full."""
    caught_up = "caught_up"
    """A page all stored before, ending with an event older than the lookback cutoff."""
    capped = "capped"
    """The run's page cap; the next run resumes where this one stopped."""


@dataclass(frozen=True)
class PageRequest:
    """A page to ask for."""

    number: int
    size: int


@dataclass(frozen=True)
class PageSeen:
    """What one page held, as the walker needs it."""

    raw_count: int
    new_events: int = 0
    all_known: bool = False
    """Every item on the page was stored (or quarantined) before this page."""
    ends_old: bool = False
    """The page's oldest (last) event is older than the lookback cutoff (False without one)."""
    repeats: int = 0
    """Items this walk had already read on an earlier page."""


class _Phase(Enum):
    scan = 1  # from the top
    backfill = 2  # after the jump to where a capped walk stopped
    rescan = 3  # the top again, for events that arrived while paging
    done = 4


@dataclass
class PageWalker:
    """Decides the pages of one run's walk over a campaign's events."""

    max_pages: int
    resume_offset: int | None = None
    page_size: int = PAGE_SIZE
    stop: Stop | None = field(default=None, init=False)
    pages: int = field(default=0, init=False)
    _phase: _Phase = field(default=_Phase.scan, init=False)
    _number: int = field(default=1, init=False)
    _size: int = field(default=0, init=False)
    _proven: bool = field(default=False, init=False)  # the server served a full page at _size
    _new_at_top: int = field(default=0, init=False)
    _shifted: bool = field(default=False, init=False)
    _rescanned: int = field(default=0, init=False)
    _stopped_at: int = field(default=0, init=False)  # where the capped walk stopped, now

    def __post_init__(self) -> None:
        if self.max_pages < 1 or self.page_size < 1:
            raise ValueError("max_pages and page_size must be at least 1")
        self._size = self.page_size

    @property
    def covered(self) -> int:
        """Events from the top the walk has covered: where a capped walk resumes."""
        # After a jump, the earlier capped walk's stop (moved down by the new events) is
        # covered too, even before the walk reads past it: a cap right after the jump must
        # not move the resume point back.
        return max((self._number - 1) * self._size, self._stopped_at)

    def next_page(self) -> PageRequest | None:
        """The page to read next, or None when the walk is over (see `stop`)."""
        if self._phase is _Phase.done:
            return None
        if self._phase is _Phase.rescan:
            if self._rescanned >= RESCAN_PAGES:
                self._phase = _Phase.done
                return None
        elif self.pages >= self.max_pages:
            self.stop, self._phase = Stop.capped, _Phase.done
            return None
        return PageRequest(self._number, self._size)

    def record(self, seen: PageSeen) -> None:
        """Take in what the page just asked for held."""
        self.pages += 1
        if self._phase is _Phase.rescan:
            self._rescanned += 1
            if seen.new_events == 0 or seen.raw_count < self._size:
                self._phase = _Phase.done
            self._number += 1
            return
        self._shifted = self._shifted or seen.repeats > 0
        if seen.all_known and seen.ends_old:
            self._finish(Stop.caught_up)
        elif seen.raw_count < self._size:
            self._short(seen)
        else:
            self._proven = True
            self._next(seen)

    def _short(self, seen: PageSeen) -> None:
        if self._proven or seen.raw_count == 0:
            self._finish(Stop.ended)
            return
        # The first page is the only one read at a size not yet proven, and at offset 0
        # whatever the server's formula: ask the next at the size it served.
        self._size, self._proven = seen.raw_count, True
        self._next(seen)

    def _next(self, seen: PageSeen) -> None:
        if self._phase is _Phase.scan:
            self._new_at_top += seen.new_events
            if seen.all_known and self.resume_offset is not None:
                self._stopped_at = self.resume_offset + self._new_at_top
                self._number = max(self._number + 1, self._stopped_at // self._size)
                self._phase = _Phase.backfill
                return
        self._number += 1

    def _finish(self, reason: Stop) -> None:
        self.stop = reason
        if self._shifted and self.pages > 1:
            self._phase, self._number = _Phase.rescan, 1
        else:
            self._phase = _Phase.done
