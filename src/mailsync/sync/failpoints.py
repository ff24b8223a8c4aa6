"""Named crash points for the crash-safety tests: `MAILSYNC_FAILPOINTS=after-note-post=3`
kills the process (SIGKILL, no clean-up) the 3rd time that point is reached.

Unset, a point costs one dictionary lookup. Points: page-stored, resolved, before-tags-post,
after-tags-post, before-note-post, after-note-post, note-recorded.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_armed: dict[str, int] = {}
_hits: Counter[str] = Counter()
for _item in filter(None, os.environ.get("MAILSYNC_FAILPOINTS", "").split(",")):
    _name, _, _n = _item.partition("=")
    _armed[_name.strip()] = int(_n or 1)


def hit(name: str) -> None:
    """Reach a named point; dies here if the environment armed it for this hit."""
    if not _armed or name not in _armed:
        return
    _hits[name] += 1
    if _hits[name] >= _armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
