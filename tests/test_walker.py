"""The page walker alone: which page to ask next, and why it stops. No HTTP, no database."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailsync.sync.walker import RESCAN_PAGES, PageRequest, PageSeen, PageWalker, Stop

Answer = Callable[[PageRequest], PageSeen]


def walk(walker: PageWalker, answer: Answer) -> list[tuple[int, int]]:
    """Drive the walker to its end; the (number, size) of every page it asked for."""
    asked = []
    while (req := walker.next_page()) is not None:
        asked.append((req.number, req.size))
        walker.record(answer(req))
        assert len(asked) < 1000, "the walk never ends"
    return asked


def listing(total: int, cap: int | None = None, served_offset: bool = False) -> Answer:
    """A list of `total` new events; a server that serves at most `cap` per page, its offset
    computed from the size asked or (served_offset) from the size served."""
    def answer(req: PageRequest) -> PageSeen:
        size = min(req.size, cap or req.size)
        start = (req.number - 1) * (size if served_offset else req.size)
        count = max(0, min(size, total - start))
        return PageSeen(count, new_events=count)
    return answer


def test_full_pages_then_a_short_one_is_the_end():
    walker = PageWalker(max_pages=50)
    assert walk(walker, listing(250)) == [(1, 100), (2, 100), (3, 100)]
    assert walker.stop is Stop.ended


def test_an_exact_multiple_ends_on_an_empty_page():
    walker = PageWalker(max_pages=50)
    assert walk(walker, listing(200)) == [(1, 100), (2, 100), (3, 100)]
    assert walker.stop is Stop.ended


@pytest.mark.parametrize("served_offset", [False, True])
def test_a_short_first_page_is_asked_again_at_the_size_served(served_offset: bool):
    walker = PageWalker(max_pages=100)
    asked = walk(walker, listing(1316, cap=25, served_offset=served_offset))
    assert asked[:3] == [(1, 100), (2, 25), (3, 25)]
    # 25 + 52 pages of 25 cover 1,316 events; the last holds 16 and ends the walk.
    assert asked[-1] == (53, 25) and len(asked) == 53
    assert walker.stop is Stop.ended


def test_a_short_list_costs_one_probe_and_an_empty_one_none():
    walker = PageWalker(max_pages=10)
    assert walk(walker, listing(40)) == [(1, 100), (2, 40)]
    assert walker.stop is Stop.ended
    empty = PageWalker(max_pages=10)
    assert walk(empty, listing(0)) == [(1, 100)]
    assert empty.stop is Stop.ended


def test_a_page_known_and_older_than_the_cutoff_is_caught_up_even_when_short():
    walker = PageWalker(max_pages=10)
    pages = {1: PageSeen(100, new_events=30), 2: PageSeen(100, all_known=True, ends_old=True)}
    assert walk(walker, lambda r: pages[r.number]) == [(1, 100), (2, 100)]
    assert walker.stop is Stop.caught_up
    small = PageWalker(max_pages=10)
    assert walk(small, lambda r: PageSeen(40, all_known=True, ends_old=True)) == [(1, 100)]
    assert small.stop is Stop.caught_up


def test_known_but_recent_pages_are_read_on():
    walker = PageWalker(max_pages=10)
    pages = {1: PageSeen(100, all_known=True), 2: PageSeen(100, all_known=True),
             3: PageSeen(100, all_known=True, ends_old=True)}
    assert walk(walker, lambda r: pages[r.number]) == [(1, 100), (2, 100), (3, 100)]


def test_the_cap_stops_the_walk_and_says_how_far_it_covered():
    walker = PageWalker(max_pages=4, page_size=10)
    assert len(walk(walker, listing(100))) == 4
    assert walker.stop is Stop.capped and walker.covered == 40


def test_a_resumed_walk_jumps_one_page_early_past_the_known_top():
    # 40 events were covered by a capped walk; 7 arrived since, so they sit at offsets 7-46.
    walker = PageWalker(max_pages=10, resume_offset=40, page_size=10)
    pages = {1: PageSeen(10, new_events=7), 2: PageSeen(10, all_known=True),
             4: PageSeen(10, all_known=True), 5: PageSeen(10, new_events=3),
             6: PageSeen(10, new_events=10), 7: PageSeen(4, new_events=4)}
    assert [n for n, _ in walk(walker, lambda r: pages[r.number])] == [1, 2, 4, 5, 6, 7]
    assert walker.stop is Stop.ended


def test_a_cap_right_after_the_jump_keeps_the_resume_point():
    walker = PageWalker(max_pages=2, resume_offset=400, page_size=10)
    pages = {1: PageSeen(10, new_events=3), 2: PageSeen(10, all_known=True)}
    assert [n for n, _ in walk(walker, lambda r: pages[r.number])] == [1, 2]
    assert walker.stop is Stop.capped and walker.covered == 403


def test_a_resumed_walk_stops_where_the_old_events_are_settled():
    walker = PageWalker(max_pages=10, resume_offset=20, page_size=10)
    pages = {1: PageSeen(10, all_known=True), 2: PageSeen(10, new_events=10),
             3: PageSeen(10, all_known=True, ends_old=True)}
    assert [n for n, _ in walk(walker, lambda r: pages[r.number])] == [1, 2, 3]
    assert walker.stop is Stop.caught_up


def test_repeated_events_mean_arrivals_so_the_top_is_read_again_until_nothing_is_new():
    walker = PageWalker(max_pages=10, page_size=10)
    rescan = iter([PageSeen(10, new_events=10), PageSeen(10, new_events=2),
                   PageSeen(10, new_events=0)])
    pages = {1: PageSeen(10, new_events=10), 2: PageSeen(10, new_events=10, repeats=3),
             3: PageSeen(5, new_events=5)}

    def answer(req: PageRequest) -> PageSeen:
        return pages.pop(req.number) if req.number in pages else next(rescan)

    assert [n for n, _ in walk(walker, answer)] == [1, 2, 3, 1, 2, 3]
    assert walker.stop is Stop.ended


def test_without_repeats_the_top_is_not_read_again():
    walker = PageWalker(max_pages=10, page_size=10)
    assert walk(walker, listing(25)) == [(1, 10), (2, 10), (3, 10)]


def test_the_rescan_is_bounded():
    walker = PageWalker(max_pages=10, page_size=10)
    pages = {1: PageSeen(10, new_events=10), 2: PageSeen(4, new_events=4, repeats=6)}
    asked = walk(walker, lambda r: pages.pop(r.number) if pages else PageSeen(10, new_events=10))
    assert len(asked) == 2 + RESCAN_PAGES


def test_a_capped_walk_does_not_rescan():
    walker = PageWalker(max_pages=2, page_size=10)
    asked = walk(walker, lambda r: PageSeen(10, new_events=10, repeats=r.number - 1))
    assert asked == [(1, 10), (2, 10)] and walker.stop is Stop.capped


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        PageWalker(max_pages=0)
