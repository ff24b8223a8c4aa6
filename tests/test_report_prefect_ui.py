"""The Prefect UI as support sees it, in headless Chromium: a deployment run's page, its
artifacts (on the flow run, not its task runs), the grouped problem table with names, the
summary with outside markup shown literally, and the custom-run form showing defaults.

Reuses the end-to-end rig of test_flows_e2e (a real `prefect server start` on a free
loopback port, prefect.yaml deployed, a worker, a sandbox), with the server's UI on.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import browser_page, shot_dir
from tests.test_flows_e2e import (  # noqa: F401 (deployed is a fixture used by name)
    PrefectServer,
    api,
    deployed,
    flow_run_artifacts,
    run,
    start_prefect_server,
    stop,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MARKUP = "Fall <b>US</b> [x](javascript:alert(1)) | `tick` *Postcard*"
"""A campaign name full of markup: it must come out as these characters, never as markup."""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """The e2e server, with its web UI on (this module opens its pages)."""
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-ui"), ui=True)
    try:
        yield server
    finally:
        stop(server.proc)


def _rename_first_campaign(config: Path) -> str:
    text = config.read_text()
    first = re.search(r'\[\[campaigns\]\]\ndrop_id = "(\d+)"\nname = "([^"]*)"', text)
    assert first is not None
    config.write_text(text.replace(f'name = "{first.group(2)}"', f'name = "{MARKUP}"', 1))
    return first.group(1)


async def _deployment_id(name: str) -> Any:
    from prefect import get_client

    async with get_client() as client:
        return (await client.read_deployment_by_name(name)).id


def _open(page: Any, url: str, wait_for: str, shots: Path) -> str:
    """Open a UI page and wait for a text on it (a screenshot of it if it never comes)."""
    page.goto(url)
    try:
        page.get_by_text(wait_for, exact=False).first.wait_for(timeout=30_000)
    except Exception:
        page.screenshot(path=str(shots / "prefect-page-failed.png"), full_page=True)
        raise
    page.wait_for_timeout(500)  # let the rest of the page settle before reading it
    return str(page.inner_text("body"))


def test_flow_run_and_artifact_pages_show_names_and_grouped_rows(
        prefect_server: PrefectServer, deployed: dict[str, Any],  # noqa: F811
        tmp_path: Path) -> None:
    drop = _rename_first_campaign(deployed["config"])
    fr = run(prefect_server, "sync-campaigns/mailsync-sync", {"max_pages": 50})
    assert fr.state.is_completed(), str(fr.state)
    with api(prefect_server):
        arts = {a.key: a for a in asyncio.run(flow_run_artifacts(fr.id)) if a.key}
        form_id = asyncio.run(_deployment_id("replay/mailsync-replay"))
    problems = arts["mailsync-sync-problems"]
    summary = arts["mailsync-sync-summary"]
    assert problems.task_run_id is None and summary.task_run_id is None  # the flow run's
    groups = json.loads(problems.data) if isinstance(problems.data, str) else problems.data
    sb = deployed["sb"]
    missing = {f"{r['first_name']} {r['last_name']}" for r in sb.recipients()
               if r["hl_contact_id"] is None}
    assert {g["recipient"] for g in groups} <= missing and groups

    ui = prefect_server.url.removesuffix("/api")
    shots = shot_dir(tmp_path)
    with browser_page(1400, 1000) as page:
        text = _open(page, f"{ui}/runs/flow-run/{fr.id}", fr.name, shots)
        page.screenshot(path=str(shots / "prefect-flow-run.png"))
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("mailsync-sync-problems").first.wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "prefect-flow-run-artifacts.png"))
        assert "mailsync-sync-summary" in page.inner_text("body")

        text = _open(page, f"{ui}/artifacts/artifact/{problems.id}", "codes affected", shots)
        page.screenshot(path=str(shots / "prefect-problems-table.png"), full_page=True)
        first = groups[0]
        assert first["recipient"] in text and first["location"] in text
        assert "Sandbox Location" in text and "no_contact" in text
        assert fr.name in text  # the artifact names its flow run, not "None"
        # The UI renders table cells as markdown: the markup in a name stays characters.
        assert MARKUP in text, text[:2000]
        assert page.locator("a[href^='javascript']").count() == 0

        text = _open(page, f"{ui}/artifacts/artifact/{summary.id}", "Do this first", shots)
        page.screenshot(path=str(shots / "prefect-summary.png"), full_page=True)
        # The campaign name's markup is shown as typed: no bold, no link, no code span.
        assert MARKUP in text, text[:2000]
        assert page.locator("a[href^='javascript']").count() == 0
        assert page.locator("b", has_text="US").count() == 0
        assert drop in text and "Sandbox Location" in text

        text = _open(page, f"{ui}/deployments/deployment/{form_id}/run", "statuses", shots)
        page.screenshot(path=str(shots / "prefect-custom-run.png"), full_page=True)
        assert "Property is type" not in text
