"""The seeded world: locations, campaigns, recipients, HighLevel contacts and the mail timeline.

Everything is generated up front from the seed: each piece gets its whole timetable (production,
USPS scans, re-routes, returns, pURL visits) as `(second, recipient, code, url)` entries, one
list per campaign, sorted once. `advance()` moves the simulated clock and *emits* the entries
now due by appending them to the campaign's event list, so the list is always in time order
and pages are served newest-first by index arithmetic, never by sorting per request. At
100,000 recipients this stays in the low seconds.

The same seed gives the same world, the same event ids and the same event dates however the
clock is advanced (24 h twice or 48 h once), because ids come from each event's position in
its campaign's sorted timetable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mailsync.codes import REST_LABEL, WEBHOOK_TYPE, EventCode

EPOCH = datetime(2026, 11, 2, tzinfo=UTC)
"""The simulated clock starts here; event dates are seconds after it."""

HOUR = 3600
DAY = 24 * HOUR
MATCH_KINDS = ("carried", "email", "phone", "none")
MATCH_WEIGHTS = (0.50, 0.25, 0.10, 0.15)

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia",
          "Tim", "Margaret", "John", "Leslie", "Shafi", "Niklaus", "Hedy", "Claude", "Karen",
          "Dennis", "Sophie", "Lynn", "Robin", "Ivan", "Mary", "Whitfield", "Adele")
_LAST = ("Byrne", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
         "Perlman", "Lee", "Hamilton", "Backus", "Lamport", "Goldwasser", "Wirth", "Lamarr",
         "Shannon", "Jones", "Ritchie", "Wilson", "Conway", "Milner", "Sutherland", "Kenneth")
_US_PLACES = (("Boston", "MA", "02110", "617"), ("New York", "NY", "10001", "212"),
              ("Austin", "TX", "78701", "512"), ("Denver", "CO", "80202", "303"),
              ("Seattle", "WA", "98101", "206"), ("Miami", "FL", "33130", "305"))
_CA_PLACES = (("Toronto", "ON", "M5V 2T6", "416"), ("Vancouver", "BC", "V6B 1A1", "604"),
              ("Montreal", "QC", "H2Y 1C6", "514"), ("Calgary", "AB", "T2P 1J9", "403"))
_STREETS = ("Main St", "Oak Ave", "Maple Dr", "Elm St", "King St W", "Harbour Rd", "Pine Ln")
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_CODES: tuple[EventCode, ...] = tuple(EventCode)
_CODE_INDEX = {c: i for i, c in enumerate(_CODES)}
_MASK48 = (1 << 48) - 1


def hl_id(rng: random.Random) -> str:
    """A HighLevel-looking 20-character id."""
    return "".join(rng.choices(_ALNUM, k=20))


def iso(seconds: int) -> str:
    """Simulated seconds after EPOCH as an ISO-8601 UTC string."""
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mix(n: int) -> int:
    """A cheap bijective scramble of a 48-bit number (odd multiplier, xor-shift)."""
    n = (n * 0x9E3779B97F4B) & _MASK48
    return n ^ (n >> 23)


@dataclass(slots=True)
class Location:
    """A HighLevel sub-account; its tokens live in the HighLevel store."""

    id: str
    name: str
    auth: str  # "pit" | "oauth"


@dataclass(slots=True)
class Recipient:
    """One mail piece's recipient, as Postalytics knows them, plus the ground truth."""

    data_id: int
    drop_id: int
    location_id: str
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    address: dict[str, str]
    var_fields: dict[str, str]
    match: str  # carried | email | phone | none: how the recipient can be found in HighLevel
    hl_contact_id: str | None  # the contact it really is (None: not in HighLevel)
    slug: str  # pURL path

    def to_json(self) -> dict[str, Any]:
        """The admin (truth) view of the recipient."""
        return {
            "data_id": self.data_id, "drop_id": str(self.drop_id),
            "location_id": self.location_id, "first_name": self.first_name,
            "last_name": self.last_name, "email": self.email, "phone": self.phone,
            "address": self.address, "var_fields": self.var_fields, "match": self.match,
            "hl_contact_id": self.hl_contact_id,
        }


@dataclass(slots=True)
class Event:
    """One emitted Postalytics event (the clean truth; messiness is applied when served)."""

    event_id: str
    drop_id: int
    code: EventCode
    recipient: Recipient
    at: int  # seconds after EPOCH
    url: str | None
    expected_delivery: str | None
    mess: int  # 0..9999, a stable per-event draw that decides how it is served when messy
    malformed: str | None  # why it is served broken on purpose (only when messy)

    def to_truth(self) -> dict[str, Any]:
        """The normalised ground-truth form."""
        return {
            "event_id": self.event_id, "drop_id": str(self.drop_id), "code": self.code.value,
            "data_id": self.recipient.data_id, "event_date": iso(self.at), "url": self.url,
            "expected_delivery": self.expected_delivery,
            "malformed": self.malformed is not None, "malformed_reason": self.malformed,
        }


@dataclass
class Campaign:
    """A Postalytics drop and its timeline."""

    number: int
    drop_id: int
    name: str
    country: str
    location_id: str
    contact_id_field: str
    list_id: int
    addressed: bool = False  # not every print network reports addressing / printing
    printed: bool = False
    quantity: int = 0  # pieces (recipients) in the drop
    # (second, tie-break, recipient index, code index, url) sorted; emitted up to `cursor`.
    schedule: list[tuple[int, int, int, int, str | None]] = field(default_factory=list)
    cursor: int = 0
    events: list[Event] = field(default_factory=list)
    by_recipient: dict[int, list[int]] = field(default_factory=dict)
    # recipient idx -> (Mailed second, expected delivery date): precomputed so emitting is cheap
    mailed_at: dict[int, tuple[int, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest entry."""
        return {"drop_id": str(self.drop_id), "name": self.name, "country": self.country,
                "location": self.location_id, "contact_id_field": self.contact_id_field}


MALFORMED_KINDS = ("missing_date", "unknown_label", "wrong_types", "absurd_length")


class Scenario:
    """The whole simulated world and its clock."""

    def __init__(self, seed: int = 1, contacts: int = 60, *, campaigns: int = 3,
                 locations: int = 3, oauth_locations: int = 1, messy: bool = False,
                 malformed_rate: float = 0.03, canada_every: int = 3) -> None:
        if contacts < 1:
            raise ValueError("contacts must be at least 1")
        self.seed = seed
        self.messy = messy
        self.malformed_rate = malformed_rate
        self.clock = 0  # seconds after EPOCH
        rng = random.Random(f"scenario:{seed}")
        n_loc = max(1, locations)
        self.locations = [
            Location(hl_id(rng), f"Sandbox Location {i + 1}",
                     "oauth" if i >= n_loc - max(0, min(oauth_locations, n_loc)) else "pit")
            for i in range(n_loc)
        ]
        self.api_key = "pk_sandbox_" + "".join(rng.choice("0123456789abcdef") for _ in range(24))
        self.hl_contacts: list[dict[str, Any]] = []  # the seed contacts for the HighLevel store
        self.recipients: list[Recipient] = []
        self.campaigns: list[Campaign] = []
        n_camp = max(1, campaigns)
        fields_ = ("var_field_1", "var_field_2", "var_field_1", "var_field_3")
        for i in range(n_camp):
            # Every third campaign is Canadian (fewer codes); 0: all US, equal in size.
            country = "CA" if canada_every and i % canada_every == canada_every - 1 else "US"
            self.campaigns.append(Campaign(
                number=i, drop_id=40211 + 17 * i,
                name=f"{'Fall' if i % 2 == 0 else 'Winter'} {country} Postcard {i + 1}",
                country=country, location_id=self.locations[i % n_loc].id,
                contact_id_field=fields_[i % len(fields_)], list_id=9100 + i))
        self._build_people(rng, contacts)
        self._build_timelines()

    # -- generation ------------------------------------------------------------------------

    def _build_people(self, rng: random.Random, total: int) -> None:
        per = [total // len(self.campaigns)] * len(self.campaigns)
        for i in range(total % len(self.campaigns)):
            per[i] += 1
        data_id = 88000
        for camp, count in zip(self.campaigns, per, strict=True):
            places = _CA_PLACES if camp.country == "CA" else _US_PLACES
            for _ in range(count):
                data_id += 1
                first, last = rng.choice(_FIRST), rng.choice(_LAST)
                city, state, zip_, area = rng.choice(places)
                # Unique per recipient: data ids are unique and below ten million.
                email = f"{first}.{last}.{data_id}@example.com".lower()
                phone = f"+1{area}{data_id % 10_000_000:07d}"
                match = rng.choices(MATCH_KINDS, MATCH_WEIGHTS)[0]
                hl_email: str | None = email
                hl_phone: str | None = phone
                pl_email: str | None = email
                pl_phone: str | None = phone
                if match == "email":  # the phone Postalytics has is not the CRM's (or none)
                    pl_phone = None if rng.random() < 0.5 else f"+1{area}9{data_id % 1_000_000:06d}"
                elif match == "phone":  # the email differs (work address) or is missing
                    work = f"{first}.{data_id}@work.example.org".lower()
                    pl_email = None if rng.random() < 0.4 else work
                elif match == "none":
                    hl_email = hl_phone = None
                    pl_email = f"{first}.{last}.{data_id}@elsewhere.example.net".lower()
                    pl_phone = f"+1{area}8{data_id % 1_000_000:06d}"
                contact_id = None
                if match != "none":
                    contact_id = hl_id(rng)
                    tags = rng.choice(([], [], ["customer"], ["customer", "vip"], ["newsletter"]))
                    self.hl_contacts.append({
                        "id": contact_id, "locationId": camp.location_id,
                        "firstName": first, "lastName": last, "email": hl_email,
                        "phone": hl_phone, "tags": list(tags), "address1": None,
                        "city": city, "state": state, "postalCode": zip_,
                        "country": camp.country})
                # Real lists are not tidy: some phones formatted, some emails capitalised.
                if pl_phone and rng.random() < 0.25:
                    digits = pl_phone[2:]
                    pl_phone = f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
                if pl_email and rng.random() < 0.1:
                    pl_email = pl_email.capitalize()
                var_fields = {camp.contact_id_field: contact_id if match == "carried" else "",
                              "var_field_10": f"OFFER-{rng.randint(100, 999)}"}
                self.recipients.append(Recipient(
                    data_id=data_id, drop_id=camp.drop_id, location_id=camp.location_id,
                    first_name=first, last_name=last, email=pl_email, phone=pl_phone,
                    address={"Street": f"{rng.randint(1, 999)} {rng.choice(_STREETS)}",
                             "City": city, "State": state, "Zip": zip_,
                             "Country": camp.country},
                    var_fields=var_fields, match=match, hl_contact_id=contact_id,
                    slug=f"{first}{last}{data_id}".lower()))
        self._add_strangers(rng, total)

    def _add_strangers(self, rng: random.Random, total: int) -> None:
        """A few CRM contacts no mailing mentions, so lookups have something to miss."""
        for loc in self.locations:
            for k in range(max(2, total // 30)):
                self.hl_contacts.append({
                    "id": hl_id(rng), "locationId": loc.id, "firstName": "Other",
                    "lastName": f"Contact{k}",
                    "email": f"other{k}.{loc.id[:6]}@example.com".lower(),
                    "phone": f"+1999{k:07d}", "tags": ["lead"], "address1": None, "city": None,
                    "state": None, "postalCode": None, "country": None})

    def _build_timelines(self) -> None:
        camp_by_drop = {c.drop_id: c for c in self.campaigns}
        rng = random.Random(f"timeline:{self.seed}")
        for camp in self.campaigns:
            camp.addressed = rng.random() < 0.6
            camp.printed = camp.country == "CA" or rng.random() < 0.7
        tie = 0
        for idx, r in enumerate(self.recipients):
            camp = camp_by_drop[r.drop_id]
            camp.quantity += 1
            for when, code, url in _timeline(rng, camp, idx, r):
                tie += 1
                camp.schedule.append((when, tie, idx, code, url))
        for camp in self.campaigns:
            camp.schedule.sort()

    # -- the clock ---------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The simulated clock."""
        return EPOCH + timedelta(seconds=self.clock)

    def advance(self, hours: float) -> int:
        """Move the clock on and emit every event now due; return how many were emitted."""
        if hours < 0:
            raise ValueError("hours must not be negative")
        self.clock += round(hours * HOUR)
        emitted = 0
        rate = int(self.malformed_rate * 10_000)
        for camp in self.campaigns:
            sched, events = camp.schedule, camp.events
            by_recipient, mailed_at, recipients = camp.by_recipient, camp.mailed_at, self.recipients
            while camp.cursor < len(sched) and sched[camp.cursor][0] <= self.clock:
                when, _, ridx, cidx, url = sched[camp.cursor]
                scrambled = _mix(camp.cursor + 1)
                event_id = f"{camp.number:02x}{scrambled:012x}"
                mess = (scrambled >> 7) % 10_000
                malformed = None
                if self.messy and mess < rate:
                    malformed = MALFORMED_KINDS[mess % len(MALFORMED_KINDS)]
                mailed, expected_date = mailed_at[ridx]
                recipient = recipients[ridx]
                events.append(Event(event_id, camp.drop_id, _CODES[cidx], recipient, when, url,
                                    expected_date if when >= mailed else None, mess, malformed))
                ids = by_recipient.get(recipient.data_id)
                if ids is None:
                    by_recipient[recipient.data_id] = ids = []
                ids.append(len(events) - 1)
                camp.cursor += 1
                emitted += 1
        return emitted

    def campaign(self, drop_id: int | str) -> Campaign | None:
        """The campaign with this drop id, if any."""
        for camp in self.campaigns:
            if str(camp.drop_id) == str(drop_id):
                return camp
        return None

    @property
    def emitted(self) -> int:
        """Events emitted so far, over all campaigns."""
        return sum(len(c.events) for c in self.campaigns)

    @property
    def scheduled(self) -> int:
        """Events in the whole timetable (emitted or not)."""
        return sum(len(c.schedule) for c in self.campaigns)


# -- one recipient's timeline (the draws' order is the scenario: keep it) --------------------

_Entry = tuple[int, int, str | None]  # (second, code index, url)


def _timeline(rng: random.Random, camp: Campaign, idx: int, r: Recipient) -> list[_Entry]:
    """One recipient's events: production, hand-off, the postal scans, then pURL visits."""
    C = _CODE_INDEX
    entries: list[_Entry] = []
    t = camp.number * 6 * HOUR + rng.randint(0, 4 * HOUR)
    entries.append((t, C[EventCode.MailPieceCreated], None))
    if camp.addressed:
        t += rng.randint(HOUR // 2, 3 * HOUR)
        entries.append((t, C[EventCode.Addressed], None))
    if camp.printed:
        t += rng.randint(HOUR, 6 * HOUR)
        entries.append((t, C[EventCode.Printed], None))
    t += rng.randint(24 * HOUR, 40 * HOUR)  # hand-off, then the first scan 12-24 h on
    entries.append((t, C[EventCode.Mailed], None))
    expected_days = 5 if camp.country == "CA" else 3
    camp.mailed_at[idx] = (t, (EPOCH + timedelta(seconds=t, days=expected_days)).strftime(
        "%Y-%m-%d"))
    if camp.country == "US":
        delivered = _us_scans(rng, t, entries)
    else:  # Canada Post: no scans after hand-off; assume delivery in 3-8 days
        delivered = t + rng.randint(3 * DAY, 8 * DAY)
    if delivered is not None and rng.random() < 0.3:
        _purl_visits(rng, r.slug, delivered, entries)
    return entries


def _us_scans(rng: random.Random, t: int, entries: list[_Entry]) -> int | None:
    """USPS scans after the first one; returns when the piece was delivered, if it was."""
    C = _CODE_INDEX
    if rng.random() > 0.05:  # some pieces miss a scan: real IMb data has gaps
        t += rng.randint(6 * HOUR, 30 * HOUR)
        entries.append((t, C[EventCode.InTransit], None))
    t += rng.randint(12 * HOUR, 48 * HOUR)
    if rng.random() > 0.05:
        entries.append((t, C[EventCode.InLocalArea], None))
    roll = rng.random()
    if roll < 0.04:  # change of address: re-routed, then travels again
        t += rng.randint(4 * HOUR, 24 * HOUR)
        entries.append((t, C[EventCode.ReRouted], None))
        t += rng.randint(12 * HOUR, 48 * HOUR)
        entries.append((t, C[EventCode.InLocalArea], None))
    elif roll < 0.07:  # returned; not always final
        t += rng.randint(6 * HOUR, 24 * HOUR)
        entries.append((t, C[EventCode.ReturnedToSender], None))
        if rng.random() >= 0.4:
            return None
        t += rng.randint(48 * HOUR, 120 * HOUR)
        entries.append((t, C[EventCode.ProcessedForDelivery], None))
        return t
    t += rng.randint(6 * HOUR, 30 * HOUR)
    entries.append((t, C[EventCode.ProcessedForDelivery], None))
    return t


def _purl_visits(rng: random.Random, slug: str, delivered: int,
                 entries: list[_Entry]) -> None:
    """pURL visits after delivery; every visit is a new event, the last may complete."""
    C = _CODE_INDEX
    url = f"https://purl.example.com/{slug}"
    goal = f"{url}/thank-you"
    t = delivered + rng.randint(2 * HOUR, 72 * HOUR)
    completes = rng.random() < 0.4
    visits = 1 + min(4, int(rng.expovariate(1.0)))
    for v in range(visits):
        entries.append((t, C[EventCode.pURLOpened], url))
        if completes and v == visits - 1:
            entries.append((t + rng.randint(60, 900), C[EventCode.pURLCompleted], goal))
        t += rng.randint(HOUR, 48 * HOUR)


# -- serving events ------------------------------------------------------------------------

def page_indices(total: int, page: int, size: int) -> range:
    """Indices (newest first) of one offset page over a list kept in time order."""
    return offset_indices(total, (page - 1) * size, size)


def offset_indices(total: int, offset: int, count: int) -> range:
    """Indices (newest first) of `count` items from `offset` over a list kept in time order."""
    start = total - 1 - offset
    stop = max(start - count, -1)
    return range(start, stop, -1)


def clean_event(ev: Event) -> dict[str, Any]:
    """The working shape of API-FACTS: PascalCase, REST label, metadata with the URL."""
    r = ev.recipient
    return {
        "EventId": ev.event_id, "Event": REST_LABEL[ev.code], "EventDate": iso(ev.at),
        "ExpectedDeliveryDate": ev.expected_delivery, "DataId": r.data_id,
        "FirstName": r.first_name, "LastName": r.last_name, "Email": r.email, "Phone": r.phone,
        "Address": dict(r.address), "VarFields": dict(r.var_fields),
        "Metadata": {"Url": ev.url},
    }


def _camel(key: str) -> str:
    return key[0].lower() + key[1:]


def _snake(key: str) -> str:
    out = [key[0].lower()]
    for ch in key[1:]:
        out.append("_" + ch.lower() if ch.isupper() else ch)
    return "".join(out)


def _rekey(obj: Any, fn: Any) -> Any:
    if isinstance(obj, dict):
        # var_field_N names are data, not keys of the API shape: leave them alone.
        return {(k if k.startswith("var_field") else fn(k)): _rekey(v, fn) for k, v in obj.items()}
    return obj


def _odd_case(label: str, mess: int) -> str:
    return (label.upper(), label.lower(), label.swapcase(), label.title())[mess % 4]


def messy_event(ev: Event) -> dict[str, Any]:
    """The event as a less tidy Postalytics might send it (decided by its stable draw)."""
    out = clean_event(ev)
    m = ev.mess
    if ev.malformed == "missing_date":
        del out["EventDate"]
    elif ev.malformed == "unknown_label":
        out["Event"] = "Teleported To Mars"
    elif ev.malformed == "wrong_types":
        out["Event"] = [out["Event"]]
        out["EventDate"] = 20261102
        out["DataId"] = {"id": out["DataId"]}
    elif ev.malformed == "absurd_length":
        out["Email"] = "x" * 5_000 + "@example.com"
        out["VarFields"] = {k: (v or "") + "y" * 10_000 for k, v in out["VarFields"].items()}
    if ev.malformed in (None, "absurd_length"):
        band = (m // 11) % 10
        if band == 0:
            out["Event"] = WEBHOOK_TYPE[ev.code]  # the webhook's integer code
        elif band == 1:
            out["Event"] = _odd_case(out["Event"], m)
    style = (m // 7) % 5
    if style == 0:
        out = _rekey(out, _camel)
    elif style == 1:
        out = _rekey(out, _snake)
    return out
