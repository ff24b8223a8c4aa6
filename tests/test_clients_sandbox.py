"""Both clients against the in-process sandbox over real HTTP: pacing, faults, OAuth."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mailsync.clients.auth import InMemoryTokenStore, OAuthTokenAuth
from mailsync.clients.highlevel import HighLevelAuthError, HighLevelClient
from mailsync.clients.postalytics import PostalyticsAuthError, PostalyticsClient
from mailsync.clients.ratelimit import FixedRateLimiter, WindowPacer
from mailsync.store.tokens import StoredToken

server_module = pytest.importorskip("mailsync.sandbox.server")
SandboxServer = server_module.SandboxServer

SCALE = 0.01  # a 10 s HighLevel window lasts 100 ms; a day lasts 14.4 min


async def scaled_sleep(seconds: float) -> None:
    # Backoff delays follow the sandbox's clock too.
    await asyncio.sleep(seconds * SCALE)


@pytest.fixture(scope="module")
def sb() -> Iterator[Any]:
    with SandboxServer(seed=7, contacts=40, time_scale=SCALE) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(sb: Any) -> Iterator[None]:
    sb.set_faults()
    sb.reset_limits()
    sb.reset_stats()
    yield
    sb.set_faults()


@pytest.fixture(scope="module")
def manifest(sb: Any) -> dict[str, Any]:
    return sb.manifest()


def pit_location(manifest: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return [loc for loc in manifest["locations"] if loc["auth"] != "oauth"][index]


def oauth_location(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(loc for loc in manifest["locations"] if loc["auth"] == "oauth")


def contact_ids(sb: Any, location_id: str) -> list[str]:
    return [c["id"] for c in sb.state(location_id)["contacts"]]


def notes_of(sb: Any, location_id: str, contact_id: str) -> list[Any]:
    contact = next(c for c in sb.state(location_id)["contacts"] if c["id"] == contact_id)
    return contact["notes"]


def hl_client(manifest: dict[str, Any], loc: dict[str, Any], **kw: Any) -> HighLevelClient:
    kw.setdefault("auth", loc["token"])
    kw.setdefault("pacer", WindowPacer())
    kw.setdefault("sleep", scaled_sleep)
    return HighLevelClient(manifest["highlevel_base_url"], loc["id"], **kw)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- pacing ---------------------------------------------------------------------------------


def test_burst_of_1000_writes_draws_no_429(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    ids = contact_ids(sb, loc["id"])

    async def burst() -> tuple[list[Any], HighLevelClient]:
        async with hl_client(manifest, loc) as client:
            outs = await asyncio.gather(*(
                client.add_tags(ids[i % len(ids)], [f"Burst {i % 7}"]) for i in range(1000)
            ))
            return outs, client

    started = time.monotonic()
    outs, client = run(burst())
    elapsed = time.monotonic() - started
    stats = sb.stats()["highlevel"]["by_location"][loc["id"]]
    assert [o.status for o in outs].count("ok") == 1000
    assert stats["rate_limited"] == 0 and client.throttled == 0
    assert stats["requests"] == 1000
    assert client.rate_limit.max == 100 and client.rate_limit.interval_ms == 100
    assert elapsed < 60


def test_other_locations_are_paced_independently(sb: Any, manifest: dict[str, Any]) -> None:
    locs = [pit_location(manifest, 0), pit_location(manifest, 1)]

    async def both() -> list[Any]:
        clients = [hl_client(manifest, loc) for loc in locs]
        ids = [contact_ids(sb, loc["id"]) for loc in locs]
        outs = await asyncio.gather(*(
            clients[i % 2].add_tags(ids[i % 2][i % len(ids[i % 2])], ["Parallel"])
            for i in range(400)
        ))
        for c in clients:
            await c.aclose()
        return outs

    outs = run(both())
    assert all(o.ok for o in outs)
    assert sb.stats()["highlevel"]["total"]["rate_limited"] == 0


# -- faults ---------------------------------------------------------------------------------


def test_error_until_spent_is_failed(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[0]
    sb.set_faults(error=1.0, codes="503")
    out = run(hl_client(manifest, loc, max_attempts=3).add_tags(cid, ["Err"]))
    assert out.status == "failed" and out.http_status == 503 and out.attempts == 3


def test_errors_are_retried_to_success(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    ids = contact_ids(sb, loc["id"])
    sb.set_faults(error=0.3)

    async def go() -> list[Any]:
        client = hl_client(manifest, loc, max_attempts=10)
        return [await client.create_note(cid, "retry me") for cid in ids[:10]]

    outs = run(go())
    assert all(o.ok and o.remote_id for o in outs)
    assert any(o.attempts > 1 for o in outs)
    assert sb.stats()["writes"]["notes_created"] == 10


def test_slow_answer_on_note_is_unknown_and_the_note_landed(
    sb: Any, manifest: dict[str, Any]
) -> None:
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[1]
    before = len(notes_of(sb, loc["id"], cid))
    sb.set_faults(slow=1.0, slow_seconds=100)  # answers held 1 s (scaled)
    client = hl_client(manifest, loc, timeout=httpx.Timeout(0.3, connect=2.0))
    out = run(client.create_note(cid, "slow note"))
    assert out.status == "unknown" and out.attempts == 1 and "ReadTimeout" in out.reason
    sb.set_faults()
    assert len(notes_of(sb, loc["id"], cid)) == before + 1  # landed: never re-sent blindly


def test_slow_answer_on_tags_is_retried(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[1]
    sb.set_faults(slow=0.5, slow_seconds=100)

    async def go() -> list[Any]:
        client = hl_client(manifest, loc, timeout=httpx.Timeout(0.3, connect=2.0),
                           max_attempts=10)
        return await asyncio.gather(*(client.add_tags(cid, ["Slow"]) for _ in range(3)))

    outs = run(go())
    assert all(o.ok for o in outs) and any(o.attempts > 1 for o in outs)


def test_reset_on_note_is_unknown_and_nothing_landed(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[2]
    before = len(notes_of(sb, loc["id"], cid))
    sb.set_faults(reset=1.0)
    out = run(hl_client(manifest, loc).create_note(cid, "reset note"))
    sb.set_faults()
    assert out.status == "unknown" and out.attempts == 1
    assert len(notes_of(sb, loc["id"], cid)) == before


def test_drop_on_note_is_unknown_and_the_note_landed(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[3]
    before = len(notes_of(sb, loc["id"], cid))
    sb.set_faults(drop=1.0)
    out = run(hl_client(manifest, loc).create_note(cid, "dropped note"))
    sb.set_faults()
    assert out.status == "unknown" and out.attempts == 1
    assert len(notes_of(sb, loc["id"], cid)) == before + 1


def test_cut_connections_on_tags_are_retried(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    ids = contact_ids(sb, loc["id"])
    sb.set_faults(reset=0.25, drop=0.25)

    async def go() -> list[Any]:
        client = hl_client(manifest, loc, max_attempts=10)
        return await asyncio.gather(*(client.add_tags(cid, ["Cut"]) for cid in ids[:10]))

    outs = run(go())
    assert all(o.ok for o in outs) and any(o.attempts > 1 for o in outs)


def test_spurious_429s_are_backed_off(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    ids = contact_ids(sb, loc["id"])
    sb.set_faults(burst429=0.4)

    async def go() -> tuple[list[Any], int]:
        client = hl_client(manifest, loc, max_attempts=10)
        outs = [await client.add_tags(cid, ["Spurious"]) for cid in ids[:10]]
        return outs, client.throttled

    outs, throttled = run(go())
    assert all(o.ok for o in outs) and throttled > 0


def test_422_list_message_is_rejected_with_joined_text(
    sb: Any, manifest: dict[str, Any]
) -> None:
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[4]
    sb.reject_notes([cid], ["body must be shorter", "body must not contain markup"])
    try:
        out = run(hl_client(manifest, loc).create_note(cid, "rejected note"))
    finally:
        sb.accept_notes()
    assert out.status == "rejected" and out.http_status == 422 and out.attempts == 1
    assert "body must be shorter; body must not contain markup" in out.reason


def test_deleted_contact_is_rejected_404(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest, 1)
    created = sb.create_contact(loc["id"], email="gone@example.com")
    cid = created.get("id") or created["contact"]["id"]
    sb.delete_contact(cid)
    out = run(hl_client(manifest, loc).create_note(cid, "to nobody"))
    assert out.status == "rejected" and out.http_status == 404
    assert "not found" in out.reason.lower()


def test_daily_quota_near_zero_defers_writes(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[5]
    sb.set_daily_remaining(loc["id"], 5)

    async def go() -> tuple[Any, Any, Any]:
        client = hl_client(manifest, loc, daily_reserve=10)
        read = await client.get_contact(cid)  # learns the quota from the headers
        return read, await client.add_tags(cid, ["Quota"]), await client.create_note(cid, "q")

    read, tag, note = run(go())
    assert read.ok
    assert tag.status == "deferred" and "daily quota" in tag.reason
    assert note.status == "deferred"
    assert sb.stats()["highlevel"]["by_location"][loc["id"]]["requests"] == 1


def test_find_and_upsert_over_http(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest, 1)

    async def go() -> tuple[Any, Any, Any]:
        client = hl_client(manifest, loc)
        up = await client.upsert_contact({"email": "new+person@example.com",
                                          "phone": "+15555550188", "firstName": "New"})
        by_email = await client.find_contact(email="new+person@example.com")
        by_phone = await client.find_contact(email="nobody@example.com", phone="+15555550188")
        return up, by_email, by_phone

    up, by_email, by_phone = run(go())
    assert up.ok and up.remote_id
    assert by_email.remote_id == up.remote_id and by_phone.remote_id == up.remote_id


# -- auth -----------------------------------------------------------------------------------


def test_oauth_expired_token_refreshes_and_continues(sb: Any, manifest: dict[str, Any]) -> None:
    loc = oauth_location(manifest)
    ids = contact_ids(sb, loc["id"])
    store = InMemoryTokenStore({loc["id"]: StoredToken(refresh_token=loc["refresh_token"],
                                                       access_token=loc["token"])})
    auth = OAuthTokenAuth(loc["id"], loc["client_id"], loc["client_secret"], store)

    async def go() -> list[Any]:
        client = hl_client(manifest, loc, auth=auth)
        first = await client.add_tags(ids[0], ["OAuth"])
        sb.expire_token(loc["id"])
        after = await asyncio.gather(*(client.add_tags(cid, ["OAuth"]) for cid in ids[:10]))
        return [first, *after]

    outs = run(go())
    assert all(o.ok for o in outs)
    assert auth.refreshes == 1
    saved = store.load(loc["id"])
    assert saved is not None and saved.refresh_token.get() != loc["refresh_token"]
    # The rotated token works for the next run.
    sb.expire_token(loc["id"])
    fresh = OAuthTokenAuth(loc["id"], loc["client_id"], loc["client_secret"], store)
    out = run(hl_client(manifest, loc, auth=fresh).add_tags(ids[0], ["OAuth again"]))
    assert out.ok and fresh.refreshes == 1


def test_revoked_static_token_is_fatal(sb: Any, manifest: dict[str, Any]) -> None:
    loc = pit_location(manifest, 1)
    cid = contact_ids(sb, loc["id"])[0]
    sb.revoke(loc["id"])
    try:
        with pytest.raises(HighLevelAuthError, match=loc["id"]):
            run(hl_client(manifest, loc).add_tags(cid, ["Revoked"]))
    finally:
        sb.restore(loc["id"])


# -- Postalytics ----------------------------------------------------------------------------


def pl_client(manifest: dict[str, Any], key: str | None = None) -> PostalyticsClient:
    return PostalyticsClient(manifest["postalytics_base_url"],
                             key or manifest["postalytics_api_key"], "sandbox",
                             limiter=FixedRateLimiter(3, 1.0 * SCALE), sleep=scaled_sleep)


def test_postalytics_reads_campaigns_and_events(sb: Any, manifest: dict[str, Any]) -> None:
    sb.advance(72)
    drop_id = manifest["campaigns"][0]["drop_id"]

    async def go() -> tuple[Any, Any, Any]:
        client = pl_client(manifest)
        return (await client.list_campaigns(), await client.campaign_details(drop_id),
                await client.events_page(drop_id, 1, page_size=100))

    campaigns, details, events = run(go())
    assert {str(c.get("drop_id")) for c in campaigns} >= {drop_id}
    assert details
    assert events and all(isinstance(e, dict) for e in events)
    assert sb.stats()["postalytics"]["total"]["rate_limited"] == 0


def test_postalytics_faults_are_retried(sb: Any, manifest: dict[str, Any]) -> None:
    drop_id = manifest["campaigns"][0]["drop_id"]
    sb.set_faults(error=0.3, reset=0.2, burst429=0.1, scope="postalytics")

    async def go() -> list[Any]:
        client = pl_client(manifest)
        client.max_attempts = 12
        return [await client.events_page(drop_id, p, page_size=10) for p in range(1, 8)]

    pages = run(go())
    assert len(pages) == 7


def test_postalytics_bad_key_is_fatal(sb: Any, manifest: dict[str, Any]) -> None:
    with pytest.raises(PostalyticsAuthError, match="'sandbox'"):
        run(pl_client(manifest, key="not-the-right-key-000").list_campaigns())


def test_no_request_broke_the_openapi_file(sb: Any) -> None:
    # Runs last in this module: the sandbox validates every HighLevel request it receives;
    # stats resets clear the log, so check it is empty now and after a mixed session.
    sb.reset_stats()
    manifest = sb.manifest()
    loc = pit_location(manifest)
    cid = contact_ids(sb, loc["id"])[6]

    async def go() -> None:
        client = hl_client(manifest, loc)
        await client.add_tags(cid, ["Spec"])
        await client.remove_tags(cid, ["Spec"])
        await client.create_note(cid, "spec")
        await client.list_notes(cid)
        await client.get_contact(cid)
        await client.find_contact(email="a+b@example.com", phone="+15555550123")
        await client.upsert_contact({"email": "spec@example.com"})

    run(go())
    assert sb.violations() == []
