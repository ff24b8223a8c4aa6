"""End to end against the sandbox: cause known problems, report exactly them, fix, replay.

Problems caused: recipients without a HighLevel contact (the sandbox has some by design), a
location's token revoked during a sync, notes refused with 422 for two contacts, and a tag a
user removed in HighLevel afterwards. The expected problem rows are computed from the
sandbox's recipients and events and from what the test did, never hard-coded.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsync.cli.demo import end_state, write_sandbox_config
from mailsync.codes import code_from_tag, tag_for, tag_key
from mailsync.config import load_settings
from mailsync.report.build import build_report, write_files
from mailsync.report.verify import verify
from mailsync.sandbox.server import SandboxServer
from mailsync.store.models import WriteIntent
from mailsync.sync.context import SyncContext
from mailsync.sync.runner import run_replay, run_sync

Key = tuple[str, str, str, str]  # (recipient_key, code, write kind, problem kind)


def _events_by_recipient(sb: SandboxServer) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for camp in sb.truth()["campaigns"]:
        for ev in camp["events"]:
            out[(str(camp["drop_id"]), ev["data_id"])].append(ev)
    return out


def _problem_set(report: Any) -> set[Key]:
    return {(r["recipient_key"], r["code"], r["kind"], r["problem"])
            for r in report.problem_records()}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with SandboxServer(seed=5, contacts=40, time_scale=0.05) as sb:
        manifest = sb.manifest()
        path, env = write_sandbox_config(manifest, tmp_path, f"sqlite:///{tmp_path}/m.db")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        settings = load_settings(path)
        yield sb, manifest, settings, SyncContext(settings, timeout=2.0)


def test_report_lists_exactly_the_caused_problems_and_replay_clears_them(world: Any) -> None:
    sb, manifest, settings, ctx = world
    camps = manifest["campaigns"]
    pit = {loc["id"]: loc for loc in manifest["locations"] if loc["auth"] == "pit"}
    revoked = camps[0]["location"]
    assert revoked in pit
    refused_camp = next(c for c in camps if c["location"] != revoked and c["location"] in pit)
    recipients = {(r["drop_id"], r["data_id"]): r for r in sb.recipients()}

    # Round 1: a clean sync.
    sb.advance(48)
    asyncio.run(run_sync(ctx))
    round1 = _events_by_recipient(sb)

    # Round 2: new mail; two contacts refuse notes; the token is revoked mid-sync.
    sb.advance(48)
    events = _events_by_recipient(sb)
    new = {k: [e for e in evs if e["event_id"] not in {x["event_id"] for x in round1[k]}]
           for k, evs in events.items()}
    refused = [k for k, r in recipients.items()
               if r["drop_id"] == refused_camp["drop_id"] and r["hl_contact_id"] and new.get(k)][:2]
    assert len(refused) == 2
    sb.reject_notes([recipients[k]["hl_contact_id"] for k in refused],
                    ["body is not allowed for this contact"])
    revoked_once: list[bool] = []

    def revoke_during_sync(_: Any) -> None:
        if not revoked_once:
            sb.revoke(revoked)
            revoked_once.append(True)

    summary = asyncio.run(run_sync(ctx, on_page=revoke_during_sync))
    assert any(revoked in str(e) for e in summary.errors)

    # A user removes one of our tags in HighLevel afterwards.
    drift_camp = refused_camp
    victim_key = next(k for k, r in recipients.items()
                      if r["drop_id"] == drift_camp["drop_id"] and r["hl_contact_id"]
                      and k not in refused)
    victim = recipients[victim_key]
    contact = next(c for c in sb.state(drift_camp["location"])["contacts"]
                   if c["id"] == victim["hl_contact_id"])
    removed_tag = next(t for t in contact["tags"] if code_from_tag(t) is not None)
    with httpx.Client(base_url=sb.highlevel_url, timeout=10, headers={
            "Authorization": f"Bearer {pit[drift_camp['location']]['token']}",
            "Version": "2021-07-28"}) as hl:
        hl.request("DELETE", f"/contacts/{victim['hl_contact_id']}/tags",
                   json={"tags": [removed_tag]}).raise_for_status()

    # What the report must say, from the sandbox's truth and what we did.
    expected: set[Key] = set()
    for k, evs in events.items():
        rk, r = f"d:{k[1]}", recipients[k]
        if r["hl_contact_id"] is None:
            for e in evs:
                expected |= {(rk, e["code"], "tag", "no_contact"),
                             (rk, e["code"], "note", "no_contact")}
        elif r["location_id"] == revoked:
            old_codes = {e["code"] for e in round1[k]}
            for e in new[k]:
                expected.add((rk, e["code"], "note", "token"))
                if e["code"] not in old_codes:
                    expected.add((rk, e["code"], "tag", "token"))
        elif k in refused:
            expected |= {(rk, e["code"], "note", "note_refused") for e in new[k]}
    removed_code = code_from_tag(removed_tag).value  # type: ignore[union-attr]
    expected.add((f"d:{victim_key[1]}", removed_code, "tag", "drift"))
    assert {k[3] for k in expected} == {"no_contact", "token", "note_refused", "drift"}

    checked = asyncio.run(verify(ctx))
    assert any(revoked in e for e in checked.errors)  # cannot read a revoked location
    assert all(pit[revoked]["token"] not in e for e in checked.errors)
    report = build_report(ctx.engine, drift=checked.drift)
    got = _problem_set(report)
    # A recipient without a contact in the revoked location: a write the apply had not
    # reached when the token was refused is owed to the token first (its lookup comes after).
    either = {(rk, code, kind, "token") for rk, code, kind, p in expected - got
              if p == "no_contact" and recipients[(_drop_of(rk, events), int(rk[2:]))][
                  "location_id"] == revoked}
    assert got - either == expected - {(rk, c, k, "no_contact") for rk, c, k, _ in either}
    # Support reads a reason and an action on every row; no row is left unexplained.
    assert all(r["reason"] and r["action"] for r in report.problem_records())
    token_rows = report.problems[report.problems["problem"] == "token"]
    assert set(token_rows["action"]) == {"the location's token was refused: renew it, "
                                         "then replay"}
    refused_rows = report.problems[report.problems["problem"] == "note_refused"]
    assert refused_rows["reason"].str.contains("body is not allowed for this contact").all()
    assert set(refused_rows["last_http_status"]) == {422}
    # Without --fix, verify only reports.
    drift_id = next(d.ledger_id for d in checked.drift)
    from sqlmodel import Session

    with Session(ctx.engine) as s:
        assert s.get(WriteIntent, drift_id).status == "done"  # type: ignore[union-attr]

    # Fix every cause: contacts created, token restored, notes accepted, drift re-opened.
    created: dict[tuple[str, int], str] = {}
    for k, r in recipients.items():
        if r["hl_contact_id"] is None and events.get(k):
            made = sb.create_contact(r["location_id"], firstName=r["first_name"],
                                     lastName=r["last_name"], email=r["email"],
                                     phone=r["phone"])
            created[k] = made["id"]
    assert created
    sb.restore(revoked)
    sb.accept_notes()
    fixed = asyncio.run(verify(ctx, fix=True))
    assert fixed.fixed == len(fixed.drift) == 1 and not fixed.errors
    reopened = build_report(ctx.engine)
    assert ("drift" in reopened.problem_counts()
            and reopened.problems.loc[reopened.problems["problem"] == "drift", "status"]
            .eq("pending").all())

    replay = asyncio.run(run_replay(ctx))
    assert not replay.errors
    after = build_report(ctx.engine)
    assert after.problems.empty, after.problems[["recipient", "code", "kind", "reason"]]
    assert asyncio.run(verify(ctx)).drift == []
    end = end_state(sb, settings)  # the sandbox links contacts created for recipients
    assert end.exact, end.describe()
    victim_tags = {tag_key(t) for t in next(c for c in sb.state()["contacts"]
                                             if c["id"] == victim["hl_contact_id"])["tags"]}
    assert tag_key(tag_for(code_from_tag(removed_tag))) in victim_tags  # type: ignore[arg-type]


def test_report_files_carry_the_problems_without_secrets(world: Any, tmp_path: Path) -> None:
    sb, manifest, _settings, ctx = world
    sb.advance(48)
    asyncio.run(run_sync(ctx))
    files = write_files(ctx.engine, tmp_path / "out")
    names = {p.name for p in files}
    assert names == {"problems.csv", "problem_writes.csv", "quarantined.csv", "report.json",
                     "report.html"}
    no_contact = {(r["drop_id"], r["data_id"]) for r in sb.recipients()
                  if r["hl_contact_id"] is None}
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {p["recipient_key"] for p in data["problems"]} == {f"d:{k[1]}" for k in no_contact
                                                              if _has_events(sb, k)}
    assert {w["recipient_key"] for p in data["problems"] for w in p["detail"]} == {
        p["recipient_key"] for p in data["problems"]}
    secrets = [manifest["postalytics_api_key"]] + [
        loc.get(f) for loc in manifest["locations"]
        for f in ("token", "client_secret", "refresh_token") if loc.get(f)]
    emails = [r["email"] for r in sb.recipients() if r["email"]]
    for path in files:
        text = path.read_text()
        assert not any(s in text for s in secrets), path
        assert not any(e in text for e in emails), path  # emails are masked


def _drop_of(recipient_key: str, events: dict[tuple[str, int], Any]) -> str:
    return next(d for d, n in events if n == int(recipient_key[2:]))


def _has_events(sb: SandboxServer, key: tuple[str, int]) -> bool:
    return bool(_events_by_recipient(sb).get(key))


def test_verify_cli_reports_drift_and_fixes_only_when_asked(world: Any) -> None:
    import typer
    from typer.testing import CliRunner

    from mailsync.cli.report import register

    sb, manifest, settings, ctx = world
    sb.advance(48)
    asyncio.run(run_sync(ctx))
    loc = next(x for x in manifest["locations"] if x["auth"] == "pit")
    contact = next(c for c in sb.state(loc["id"])["contacts"]
                   if any(code_from_tag(t) for t in c["tags"]))
    tag = next(t for t in contact["tags"] if code_from_tag(t))
    with httpx.Client(base_url=sb.highlevel_url, timeout=10, headers={
            "Authorization": f"Bearer {loc['token']}", "Version": "2021-07-28"}) as hl:
        hl.request("DELETE", f"/contacts/{contact['id']}/tags",
                   json={"tags": [tag]}).raise_for_status()
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    config = str(settings.source)
    res = runner.invoke(app, ["verify", "--config", config])
    assert res.exit_code == 5, res.output  # drift found
    assert "1 write(s) missing in HighLevel" in res.output and "--fix" in res.output
    assert "drift" not in build_report(ctx.engine).problem_counts()  # it changed nothing
    res = runner.invoke(app, ["verify", "--config", config, "--fix"])
    assert res.exit_code == 5 and "Re-opened 1 write(s)" in res.output, res.output
    assert build_report(ctx.engine).problem_counts()["drift"] == 1
    asyncio.run(run_sync(ctx))  # the next scheduled sync re-sends it
    assert tag_key(tag) in {tag_key(t) for c in sb.state(loc["id"])["contacts"]
                            if c["id"] == contact["id"] for t in c["tags"]}
    assert "drift" not in build_report(ctx.engine).problem_counts()
    clean = runner.invoke(app, ["verify", "--config", config])
    assert clean.exit_code == 0 and "No drift" in clean.output, clean.output
