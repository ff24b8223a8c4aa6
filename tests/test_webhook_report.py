"""The reconciliation report says how events came: by webhook, or by the poll alone."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mailsync.report.build import build_report
from mailsync.report.render import markdown_summary, report_dict, write_report_files
from mailsync.report.webhooks import SINCE_LAST_RUN
from tests.webhook_helpers import webhook_rig


@pytest.mark.slow
def test_per_run_and_campaign_webhooks_lost_deliveries_and_latency(tmp_path):
    with webhook_rig(tmp_path, seed=3, contacts=40) as w:
        w.sb.set_webhooks({d: w.url(d) for d in w.drops()}, lost_rate=0.1, duplicate_rate=0.1)
        w.sb.advance(36)
        w.sb.wait_webhooks()
        w.wait_applied()
        lost = Counter(d["drop_id"] for d in w.sb.webhooks(log=True)["log"] if d["lost"])
        first = w.rig.sync()
        w.sb.advance(24)  # after the last sync: not yet confirmed by any run
        w.sb.wait_webhooks()
        w.wait_applied()

        report = build_report(w.ctx.engine, settings=w.settings)
        table = report.webhooks
        log = w.sb.webhooks(log=True)["log"]
        delivered = Counter(d["drop_id"] for d in log if not d["lost"])
        assert sum(lost.values()) > 0
        # Every lost delivery is an event the poll alone found (in the run that found it),
        # every other one came by webhook; nothing is counted twice.
        mine = table[table["run_id"] == first.run_id]
        later = table[table["run_id"] == SINCE_LAST_RUN]
        assert dict(zip(mine["drop_id"], mine["poll_only"], strict=True)) == {
            d: lost.get(d, 0) for d in mine["drop_id"]}
        assert later["poll_only"].sum() == 0  # lost ones after the run: no run found them yet
        assert int(table["by_webhook"].sum()) == sum(delivered.values())
        assert (table["latency_p95_s"].dropna() < 30).all() and table["written"].sum() > 0
        assert set(table["campaign"]) <= {c.name for c in w.settings.campaigns}

        md = markdown_summary(report)
        assert "## Webhooks and the poll" in md and "poll only, webhook lost" in md
        data = json.loads(json.dumps(report_dict(report), default=str))
        assert len(data["webhooks"]) == len(table)
        write_report_files(report, tmp_path / "out")
        saved = json.loads((tmp_path / "out" / "report.json").read_text())
        assert len(saved["webhooks"]) == len(table)

        # One run's report has that run's rows only.
        one = build_report(w.ctx.engine, run_id=first.run_id, settings=w.settings).webhooks
        assert set(one["run_id"]) == {first.run_id}


def test_without_webhooks_the_report_has_no_such_section(tmp_path):
    with webhook_rig(tmp_path, seed=3, contacts=12) as w:
        w.sb.advance(24)
        w.rig.sync()
        report = build_report(w.ctx.engine, settings=w.settings)
        assert report.webhooks.empty
        assert "Webhooks" not in markdown_summary(report)
