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
from tests.prefect_server import (
    PrefectServer,
    api,
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


def _artifacts(server: PrefectServer, flow_run_id: Any) -> dict[str, Any]:
    with api(server):
        return {a.key: a for a in asyncio.run(flow_run_artifacts(flow_run_id)) if a.key}


def _rows(artifact: Any) -> list[dict[str, Any]]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_flow_run_and_artifact_pages_show_names_and_grouped_rows(
        prefect_server: PrefectServer, deployed: dict[str, Any],
        tmp_path: Path) -> None:
    fr = run(prefect_server, "sync-campaigns/mailsync-sync", {"max_pages": 50})
    assert fr.state.is_completed(), str(fr.state)
    arts = _artifacts(prefect_server, fr.id)
    problems, summary = arts["mailsync-sync-problems"], arts["mailsync-sync-summary"]
    assert problems.task_run_id is None and summary.task_run_id is None  # the flow run's
    groups = _rows(problems)
    missing = {f"{r['first_name']} {r['last_name']}" for r in deployed["sb"].recipients()
               if r["hl_contact_id"] is None}
    assert groups and {g["recipient"] for g in groups} <= missing

    form_id = asyncio.run(_deployment_id_at(prefect_server, "replay/mailsync-replay"))
    ui = prefect_server.url.removesuffix("/api")
    shots = shot_dir(tmp_path)
    with browser_page(1400, 1000) as page:  # (it runs an event loop: no asyncio.run inside)
        _open(page, f"{ui}/runs/flow-run/{fr.id}", fr.name, shots)
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("mailsync-sync-problems").first.wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "prefect-flow-run-artifacts.png"))
        text = page.inner_text("body")
        # Filed under the flow run, not under a task run.
        section = text[text.index("\nFlow run\n"):]
        section = section[:section.index("\nTask runs\n")]
        assert "mailsync-sync-problems" in section and "mailsync-sync-summary" in section

        text = _open(page, f"{ui}/artifacts/artifact/{problems.id}", "codes affected", shots)
        page.screenshot(path=str(shots / "prefect-problems-table.png"))
        first = groups[0]
        assert first["recipient"] in text and first["location"] in text
        assert "Sandbox Location" in text and "no_contact" in text and "what to do" in text
        assert fr.name in text  # the artifact names its flow run, not "None"

        text = _open(page, f"{ui}/artifacts/artifact/{summary.id}", "Do this first", shots)
        page.screenshot(path=str(shots / "prefect-summary.png"), full_page=True)
        assert "Sandbox Location" in text and "Problems by recipient" in text

        text = _open(page, f"{ui}/deployments/deployment/{form_id}/run", "statuses", shots)
        page.screenshot(path=str(shots / "prefect-custom-run.png"), full_page=True)
        assert "Property is type" not in text


async def _deployment_id_at(server: PrefectServer, name: str) -> Any:
    with api(server):
        return await _deployment_id(name)


def test_markup_in_a_campaign_name_stays_text_in_the_ui(
        prefect_server: PrefectServer, deployed: dict[str, Any],
        tmp_path: Path) -> None:
    drop = _rename_first_campaign(deployed["config"])
    # A sync first (the ledger must have problems to show), then the daily report.
    assert run(prefect_server, "sync-campaigns/mailsync-sync", {}).state.is_completed()
    fr = run(prefect_server, "reconcile/mailsync-reconcile", {})
    assert fr.state.is_completed(), str(fr.state)
    arts = _artifacts(prefect_server, fr.id)
    ui = prefect_server.url.removesuffix("/api")
    shots = shot_dir(tmp_path)
    with browser_page(1400, 1000) as page:
        for key, wait_for in (("mailsync-reconcile-problems", "codes affected"),
                              ("mailsync-reconcile-summary", "Do this first")):
            text = _open(page, f"{ui}/artifacts/artifact/{arts[key].id}", wait_for, shots)
            # The UI renders markdown (table cells too): the name's markup stays characters.
            assert MARKUP in text, (key, text[:2000])
            assert page.locator("a[href^='javascript']").count() == 0, key
            assert page.locator("b", has_text="US").count() == 0, key
        assert drop in text
