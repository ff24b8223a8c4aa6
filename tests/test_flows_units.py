"""Fast checks of the Prefect glue: keys, chunking, secrets, retry rules, schemas, config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from mailsync.clients.auth import AuthError
from mailsync.config import ConfigError, SecretRef
from mailsync.redact import register_secret
from tasks import artifacts, secrets
from tasks.artifacts import artifact_key, table_chunks
from tasks.secrets import prefect_secret_resolver

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"[a-z0-9-]+")


@pytest.mark.parametrize("loc", ["p3hJajHDfTVxMkMmq2P5", "loc_1", "abc", "ABC", "a b/c", "--x--"])
def test_artifact_keys_are_valid_and_stable(loc: str) -> None:
    key = artifact_key("mailsync-progress", loc)
    assert KEY.fullmatch(key) and key == artifact_key("mailsync-progress", loc)


def test_artifact_keys_do_not_collide_on_case() -> None:
    assert artifact_key("mailsync-progress", "AbC") != artifact_key("mailsync-progress", "abc")
    assert artifact_key("mailsync-sync-summary") == "mailsync-sync-summary"


def test_tables_are_chunked_redacted_and_shortened() -> None:
    register_secret("tok-SUPERSECRET-123")
    rows = [{"id": i, "reason": "401 for Bearer tok-SUPERSECRET-123", "n": None}
            for i in range(1201)]
    rows[0]["reason"] = "x" * 1000
    chunks = table_chunks(rows)
    assert [len(c) for c in chunks] == [500, 500, 201]
    assert len(chunks[0][0]["reason"]) == artifacts.MAX_CELL
    assert all("SUPERSECRET" not in str(r) for c in chunks for r in c)
    assert chunks[2][-1]["id"] == 1200 and chunks[2][-1]["n"] is None


def test_publish_table_uses_part_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import prefect.artifacts

    made: list[tuple[str, int]] = []

    async def create(table: list[Any], key: str, description: str) -> None:
        made.append((key, len(table)))

    monkeypatch.setattr(prefect.artifacts, "acreate_table_artifact", create)
    keys = asyncio.run(artifacts.publish_table("mailsync-sync-rejected-writes",
                                               [{"id": i} for i in range(1001)], "rejected"))
    assert keys == ["mailsync-sync-rejected-writes", "mailsync-sync-rejected-writes-part-2",
                    "mailsync-sync-rejected-writes-part-3"]
    assert [n for _, n in made] == [500, 500, 1]
    made.clear()
    assert asyncio.run(artifacts.publish_table("k", [], "none")) == ["k"]
    assert made == [("k", 0)]


class _Client:
    """Stands in for a Prefect API client: counts how often one is opened."""

    opened: ClassVar[list[_Client]] = []

    async def __aenter__(self) -> _Client:
        _Client.opened.append(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def test_progress_updates_of_an_apply_share_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import uuid

    import prefect
    import prefect.artifacts

    from mailsync.sync.apply import ApplyOptions, ApplyResult
    from tasks import sync as task_sync

    # A client per update cost a TLS context (~30 ms of CPU in the apply's loop), a
    # connection and a CSRF request each time (bench/RESULTS.md, section 5).
    seen: list[tuple[float, Any]] = []

    async def update(artifact_id: Any, progress: float, description: str | None = None,
                     client: Any = None) -> Any:
        seen.append((progress, client))
        return artifact_id

    async def apply(_ctx: Any, location_id: str, _opts: Any, progress: Any) -> ApplyResult:
        for _ in range(3):  # a write, then time for the ticker to send an update
            progress(location_id, 1)
            await asyncio.sleep(0.05)
        return ApplyResult(location_id)

    _Client.opened = []
    monkeypatch.setattr(prefect, "get_client", _Client)
    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    monkeypatch.setattr(task_sync.runner, "apply", apply)
    monkeypatch.setattr(task_sync, "PROGRESS_EVERY", 0.01)
    asyncio.run(task_sync._apply_with_progress(
        None, "loc-1", ApplyOptions(), 4, uuid.uuid4(), task_sync._Window()))  # type: ignore[arg-type]
    assert len(_Client.opened) == 1
    assert len(seen) >= 3 and seen[-1][0] == 100.0  # updates while applying, then the end
    assert {client for _, client in seen} == {_Client.opened[0]}


def test_progress_without_a_client_never_fails_the_apply(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import asyncio

    import prefect

    class Down(_Client):
        async def __aenter__(self) -> _Client:
            raise RuntimeError("Prefect API unreachable")

    monkeypatch.setattr(prefect, "get_client", Down)

    async def apply() -> Any:
        async with artifacts.progress_client() as client:
            return client

    assert asyncio.run(apply()) is None


def test_resolver_prefers_block_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def load(name: str) -> str:
        calls.append(name)
        if name == "missing":
            raise ValueError("Unable to find block document named missing")
        return f"value-of-{name}"

    monkeypatch.setattr(secrets, "_load_block", load)
    resolve = prefect_secret_resolver({"TOKEN_ENV": "env-token-value"})
    assert resolve(SecretRef(secret="loc1", env="TOKEN_ENV")) == "value-of-loc1"
    assert resolve(SecretRef(secret="loc1", env="TOKEN_ENV")) == "value-of-loc1"
    assert calls == ["loc1"]  # cached: one API read per resolver
    assert resolve(SecretRef(secret="missing", env="TOKEN_ENV")) == "env-token-value"
    assert resolve(SecretRef(env="TOKEN_ENV")) == "env-token-value"
    with pytest.raises(ConfigError, match="'missing' could not be read"):
        resolve(SecretRef(secret="missing"))
    with pytest.raises(ConfigError, match="NOPE"):
        resolve(SecretRef(env="NOPE"))


def test_no_retry_on_auth_or_config_errors() -> None:
    from prefect.states import Failed

    from tasks.sync import retry_unless_config

    def retries(exc: BaseException) -> bool:
        return retry_unless_config(None, None, Failed(data=exc))  # type: ignore[arg-type]

    assert not retries(AuthError("401"))
    assert not retries(ConfigError("bad"))
    assert retries(TimeoutError("slow"))
    assert retries(ValueError("bad JSON page"))


def _props(flow: Any) -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow.fn).model_dump()["properties"]


def test_flow_parameters_are_described_for_the_ui() -> None:
    from flows import reconcile, replay, sync_campaigns

    expected = {
        sync_campaigns: {"campaigns", "dry_run", "lookback_hours", "max_pages", "config_path",
                         "lease_wait_seconds"},
        replay: {"statuses", "campaigns", "since", "config_path", "lease_wait_seconds"},
        reconcile: {"since_hours", "verify", "fix", "config_path"},
    }
    for flow, names in expected.items():
        props = _props(flow)
        assert set(props) == names, flow.name
        assert all(p.get("description") for p in props.values()), flow.name
    assert _props(replay)["statuses"]["items"]["enum"] == ["pending", "rejected", "failed",
                                                           "unknown"]


def test_task_runner_is_bounded() -> None:
    from flows import reconcile, replay, sync_campaigns

    # Prefect's default pool is unbounded; ours is not (private attribute: no public getter).
    for flow in (sync_campaigns, replay, reconcile):
        assert flow.task_runner._max_workers == 8  # type: ignore[attr-defined]


def test_tasks_persist_nothing_and_cache_nothing() -> None:
    from prefect.cache_policies import NO_CACHE

    from tasks import reconcile as rt
    from tasks import sync as st

    for t in (st.begin_run, st.fetch_and_plan, st.apply_location, st.finish_run,
              rt.verify_location, rt.report, rt.locations):
        assert t.persist_result is False and t.cache_policy is NO_CACHE, t.name
    assert st.fetch_and_plan.retries == 2 and st.apply_location.retries == 1


def test_prefect_yaml_deployments() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) == {"mailsync-sync", "mailsync-reconcile", "mailsync-replay",
                         "mailsync-apply"}
    assert deps["mailsync-sync"]["schedules"] == [{"interval": 900}]
    assert deps["mailsync-sync"]["concurrency_limit"] == {"limit": 1,
                                                         "collision_strategy": "CANCEL_NEW"}
    assert deps["mailsync-reconcile"]["schedules"][0]["cron"] == "0 6 * * *"
    assert deps["mailsync-replay"]["schedules"] == []
    assert all(d["work_pool"]["name"] == "mailsync-pool" for d in deps.values())
    pull = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ home.stdout }}"
    from prefect.flows import load_flow_from_entrypoint

    for d in deps.values():
        path, name = d["entrypoint"].split(":")
        assert load_flow_from_entrypoint(f"{ROOT / path}:{name}") is not None


def test_serve_builds_the_same_schedules() -> None:
    from deployments.serve import build_deployments

    sync, reconcile, replay = build_deployments("Europe/Paris")
    assert sync.name == "mailsync-sync"
    assert [s.schedule.interval.total_seconds() for s in sync.schedules] == [900]
    assert sync.concurrency_limit == 1
    assert sync.concurrency_options.collision_strategy == "CANCEL_NEW"
    cron = reconcile.schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 6 * * *", "Europe/Paris")
    assert replay.schedules == []


# -- failures under Prefect: one line, retried only when retrying can help ----------------------

CLOSED_STORE = """
[database]
url = "postgresql+psycopg://postgres:hunter2secret@127.0.0.1:1/test"
[[locations]]
id = "loc-1"
name = "Boston office"
token_env = "T_BOSTON"
[[campaigns]]
drop_id = "40211"
location = "loc-1"
"""


def test_a_task_that_fails_as_expected_ends_with_its_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from prefect.states import State

    from tasks import sync as st

    # `.fn` runs outside a task run: the task's own logging goes to a plain logger.
    monkeypatch.setattr(st, "get_run_logger", lambda: logging.getLogger("test"))
    config = tmp_path / "mailsync.toml"
    config.write_text(CLOSED_STORE)
    state = st.begin_run.fn(str(config), "sync")
    assert isinstance(state, State) and state.is_failed()
    assert state.message is not None and "\n" not in state.message
    assert state.message.startswith("store postgresql+psycopg://postgres:***@127.0.0.1:1/test:")
    assert "hunter2secret" not in state.message and "database server is running" in state.message


def test_an_unexpected_failure_still_raises_with_its_traceback(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    from tasks import sync as st

    def broken(config_path: str | None) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(st, "build_context", broken)
    with pytest.raises(ZeroDivisionError):
        st.begin_run.fn(None, "sync")


def test_retries_only_where_they_can_help() -> None:
    from prefect.states import Failed

    from mailsync.clients.postalytics import (
        PostalyticsAuthError,
        PostalyticsError,
        PostalyticsFailure,
    )
    from mailsync.store.errors import StoreError, StoreProblem
    from tasks.sync import retry_unless_config

    def retries(exc: BaseException) -> bool:
        return retry_unless_config(None, None, Failed(data=exc))  # type: ignore[arg-type]

    assert not retries(StoreError(StoreProblem.read_only, "sqlite:///x.db"))
    assert not retries(StoreError(StoreProblem.disk_full, "sqlite:///x.db"))
    assert retries(StoreError(StoreProblem.unreachable, "postgresql://h/db"))
    assert retries(PostalyticsError("down", kind=PostalyticsFailure.unreachable))
    assert not retries(PostalyticsAuthError("401"))


def test_a_failed_run_says_each_cause_once() -> None:
    from flows._common import RunFailed
    from mailsync.store.runs import ErrorKind, RunError, Scope

    down = "cannot reach Postalytics at api.postalytics.com:443: connection refused"
    errors = [RunError(Scope.campaign, d, ErrorKind.unreachable, down) for d in ("1", "2", "3")]
    errors.append(RunError(Scope.location, "loc-1", ErrorKind.credentials,
                           "HighLevel refused the token for location Boston (loc-1): 401"))
    message = str(RunFailed(errors))
    assert message.count(down) == 1 and "campaign 1, 2, 3" in message
    assert message.startswith("4 step(s) failed: ")
    assert "location loc-1: HighLevel" not in message  # a message naming its target as is


@pytest.mark.slow
def test_under_prefect_the_failed_task_message_is_the_line(tmp_path: Path) -> None:
    from prefect import flow

    from tasks.sync import begin_run

    config = tmp_path / "mailsync.toml"
    config.write_text(CLOSED_STORE)

    @flow  # where the task runs in a deployment (outside one, Prefect warns of its logs)
    def first_step() -> tuple[bool, str | None]:
        state = begin_run(str(config), "sync", return_state=True)
        return state.is_failed(), state.message

    failed, message = first_step()
    assert failed
    assert message and message.startswith(
        "store postgresql+psycopg://postgres:***@127.0.0.1:1/test:")
