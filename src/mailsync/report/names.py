"""Who and where in the words people use: campaign and location names, and the time zone.

The store knows drop ids and location ids; support staff know "Spring postcard, Boston" and
"Boston office". `ReportNames` carries the configured names (and Postalytics' own campaign
names, when read) into the report, and says which campaigns are configured at all: a drop
id configured once by mistake stays in the store, and must not borrow another campaign's
name in every later report. Without a config the report still works, on the store's names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from mailsync.config import Settings
from mailsync.redact import redact
from mailsync.store.models import Campaign

log = logging.getLogger("mailsync.report")
_DROP_KEYS = ("drop_id", "DropId", "dropId", "DirectMailDropId", "id")
_NAME_KEYS = ("name", "Name", "DirectMailName")

UNCONFIGURED = "no longer configured"
"""How a campaign that is in the store but not in the config is labelled."""


@dataclass(frozen=True)
class ReportNames:
    """Names for ids, which campaigns are configured, and the zone times are shown in."""

    locations: Mapping[str, str] = field(default_factory=dict)
    campaigns: Mapping[str, str] = field(default_factory=dict)
    configured: frozenset[str] | None = None
    """The configured drop ids; None when the report was built without a config."""
    zone: tzinfo = UTC
    zone_name: str = "UTC"

    @classmethod
    def from_settings(cls, settings: Settings,
                      postalytics_names: Mapping[str, str] | None = None) -> ReportNames:
        """The config's names (a campaign without one takes Postalytics' name) and zone."""
        extra = postalytics_names or {}
        campaigns = {c.drop_id: c.name or extra.get(c.drop_id, "") for c in settings.campaigns}
        return cls(locations={loc.id: loc.name or "" for loc in settings.locations},
                   campaigns={d: n for d, n in campaigns.items() if n},
                   configured=frozenset(c.drop_id for c in settings.campaigns),
                   zone=ZoneInfo(settings.timezone), zone_name=settings.timezone)

    def with_store(self, stored: Mapping[str, Campaign]) -> ReportNames:
        """Fill names the config lacks from the store, but never for an unconfigured drop:
        its stored name is the one it was (mistakenly) given, which may be another's."""
        names = dict(self.campaigns)
        for drop, camp in stored.items():
            if drop not in names and camp.name and self.is_configured(drop) is not False:
                names[drop] = camp.name
        return replace(self, campaigns=names)

    def is_configured(self, drop_id: str) -> bool | None:
        """Whether the campaign is in the config (None: no config to tell)."""
        return None if self.configured is None else drop_id in self.configured

    def campaign(self, drop_id: str) -> str:
        """The campaign's name for people, e.g. `Spring postcard` or `drop 99999 (no longer
        configured)`."""
        if self.is_configured(drop_id) is False:
            return f"drop {drop_id} ({UNCONFIGURED})"
        return self.campaigns.get(drop_id) or f"drop {drop_id}"

    def location(self, location_id: str) -> str:
        """The location's name for people, else its id."""
        return self.locations.get(location_id) or location_id

    def local(self, when: datetime | None) -> datetime | None:
        """A stored (UTC) moment in the operator's zone."""
        if when is None:
            return None
        aware = when.replace(tzinfo=UTC) if when.tzinfo is None else when
        return aware.astimezone(self.zone)


class CampaignLister(Protocol):
    """What `postalytics_names` needs of a Postalytics client."""

    async def list_campaigns(self) -> list[dict[str, Any]]: ...


def _first(item: Mapping[str, Any], keys: Iterable[str]) -> str:
    return next((str(item[k]) for k in keys if item.get(k) not in (None, "")), "")


async def postalytics_names(client: CampaignLister, drop_ids: Iterable[str]) -> dict[str, str]:
    """Postalytics' own names of these campaigns (one request), for those the config leaves
    unnamed. A name is a convenience: if Postalytics cannot be read, the ids are shown."""
    wanted = set(drop_ids)
    if not wanted:
        return {}
    try:
        items = await client.list_campaigns()
    except Exception as exc:  # the report must not fail over a name
        log.warning("campaign names not read from Postalytics: %s", redact(exc))
        return {}
    found = {_first(i, _DROP_KEYS): _first(i, _NAME_KEYS) for i in items}
    return {d: n for d, n in found.items() if d in wanted and n}
