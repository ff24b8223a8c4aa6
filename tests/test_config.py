"""Configuration: the example loads; bad files give one line naming file, key and problem."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailsync.cli.main import app
from mailsync.codes import CA_CODES, EventCode
from mailsync.config import ConfigError, SecretRef, env_resolver, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "mailsync.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


MINIMAL = """
[[locations]]
id = "loc1"
token_env = "T1"

[[campaigns]]
drop_id = 42
location = "loc1"
"""


def test_example_file_is_valid_and_means_what_it_says():
    s = load_settings(EXAMPLE, environ={})
    assert [loc.id for loc in s.locations] == ["ve9EPM428h8vShlRW1KT", "Gl6qXk2KpGmd6Yw1rJ3Z"]
    boston, toronto = s.campaigns
    assert boston.selected_codes == {EventCode.Mailed, EventCode.ProcessedForDelivery,
                                     EventCode.ReturnedToSender, EventCode.pURLOpened,
                                     EventCode.pURLCompleted}
    assert boston.retrigger == (EventCode.pURLOpened,)
    assert toronto.selected_codes == CA_CODES
    assert s.location("Gl6qXk2KpGmd6Yw1rJ3Z").oauth is not None


def test_environment_overrides_the_file(tmp_path: Path):
    env = {"MAILSYNC_CONFIG": str(write(tmp_path, MINIMAL)),
           "MAILSYNC_DATABASE_URL": "sqlite:///other.db",
           "MAILSYNC_POSTALYTICS_URL": "http://127.0.0.1:9/postalytics/api/v1",
           "MAILSYNC_HIGHLEVEL_URL": "http://127.0.0.1:9/highlevel"}
    s = load_settings(environ=env)
    assert s.database.url == f"sqlite:///{Path.cwd() / 'other.db'}"  # relative to where it runs
    assert s.postalytics.base_url.endswith("/postalytics/api/v1")
    assert s.highlevel.base_url.endswith("/highlevel")
    assert s.campaigns[0].drop_id == "42"


@pytest.mark.parametrize(("text", "expected"), [
    ("[database\nurl=1", "not valid TOML"),
    (MINIMAL + 'events = ["Delivered"]', "campaigns.0.events: unknown event code 'Delivered'"),
    (MINIMAL.replace('location = "loc1"', 'location = "nowhere"'),
     "campaigns.0.location: 'nowhere' is not a configured location"),
    (MINIMAL + 'country = "CA"\nevents = ["InTransit"]', "InTransit does not exist for CA"),
    (MINIMAL + 'country = "MX"', "campaigns.0.country"),
    (MINIMAL + 'contact_id_field = "var_field_11"', "campaigns.0.contact_id_field"),
    (MINIMAL.replace('token_env = "T1"', 'token = "abc"'), "locations.0.token: unknown key"),
        (MINIMAL.replace('token_env = "T1"', 'tokn_env = "T1"'),
         "locations.0.tokn_env: unknown key (did you mean token_env?)"),
        ("[databse]\nurl = 'x'\n" + MINIMAL, "databse: unknown key (did you mean database?)"),
        (MINIMAL + "lookbak_hours = 3", "campaigns.0.lookbak_hours: unknown key (did you mean "
         "lookback_hours?)"),
        (MINIMAL + 'events = ["Mailled"]', "unknown event code 'Mailled' (did you mean Mailed?)"),
    (MINIMAL.replace('token_env = "T1"', ''), "locations.0: needs token_env"),
    (MINIMAL + "lookback_hours = -1", "campaigns.0.lookback_hours"),
    (MINIMAL + MINIMAL.split("[[campaigns]]")[1].join(["[[campaigns]]", ""]),
     "duplicate drop_id '42'"),
])
def test_bad_files_give_one_clear_line(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path) + ":")
    assert expected in message
    assert "\n" not in message


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_secrets_resolve_from_env_and_missing_ones_are_named_not_shown():
    resolve = env_resolver({"T1": "s3cr3t"})
    assert resolve(SecretRef(env="T1")) == "s3cr3t"
    with pytest.raises(ConfigError, match="env T2 is not set"):
        resolve(SecretRef(env="T2"))


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # Table cells wrap at 80 columns; a wide console keeps each cell on one line to assert on.
    from mailsync.cli import options

    for console in (options.console, options.err_console):
        monkeypatch.setattr(console, "width", 300)


EXAMPLE_SECRETS = ("POSTALYTICS_API_KEY", "HIGHLEVEL_TOKEN_BOSTON", "HIGHLEVEL_CLIENT_ID",
                   "HIGHLEVEL_CLIENT_SECRET", "HIGHLEVEL_REFRESH_TOKEN_TORONTO")


def test_cli_config_check_reports_what_it_found_and_exits_2_on_bad_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in EXAMPLE_SECRETS:
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    monkeypatch.setenv("MAILSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'ms.db'}")
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", "--config", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "2 location(s)" in ok.output and "2 campaign(s)" in ok.output
    assert "Mailed" in ok.output and "var_field_1" in ok.output
    assert "Boston office" in ok.output and "(ve9EPM428h8vShlRW1KT)" in ok.output  # name, id
    assert "value-of-" not in ok.output  # a secret is named, never shown
    bad = runner.invoke(app, ["config", "check", "--config", str(write(tmp_path, "x = [")),])
    assert bad.exit_code == 2
    assert "not valid TOML" in bad.output
    assert "Traceback" not in bad.output


def test_config_check_fails_when_a_secret_is_not_set(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    for name in EXAMPLE_SECRETS:
        monkeypatch.setenv(name, "set")
    monkeypatch.delenv("HIGHLEVEL_TOKEN_BOSTON")
    monkeypatch.delenv("POSTALYTICS_API_KEY")
    # A refresh token may live in the store once rotated: its absence is only a warning.
    monkeypatch.delenv("HIGHLEVEL_REFRESH_TOKEN_TORONTO")
    monkeypatch.setenv("MAILSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'ms.db'}")
    res = CliRunner().invoke(app, ["config", "check", "--config", str(EXAMPLE)])
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert "env POSTALYTICS_API_KEY is not set" in flat
    assert "env HIGHLEVEL_TOKEN_BOSTON is not set" in flat
    assert "2 check(s) failed" in flat
    assert "warning" in flat and "HIGHLEVEL_REFRESH_TOKEN_TORONTO" in flat
    assert not (tmp_path / "ms.db").exists()  # checking never creates the store


def test_an_unknown_code_lists_the_valid_ones(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, MINIMAL + 'events = ["Deliverd"]'), environ={})
    message = str(info.value)
    assert all(code.value in message for code in EventCode
               if code not in (EventCode.NONE, EventCode.Error))
