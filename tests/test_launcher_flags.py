"""The command lines, as clap makes TGI's: unknown flags exit 2 naming the flag (and a close match), help
lines name each flag's env var and default, --version."""

from __future__ import annotations

import pytest

from tgi_async.cli import build_parser
from tgi_async.launcher.cli import config_from_args
from tgi_async.launcher.config import LaunchConfig


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("PORT", "MODEL_ID", "MAX_CONCURRENT_REQUESTS", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def parse(*argv: str) -> LaunchConfig:
    return config_from_args(build_parser("launch").parse_args(["launch", *argv]))


@pytest.mark.parametrize(
    ("argv", "flag", "tip"),
    [
        (("--prot", "3001"), "--prot", "--port"),
        (("--max-concurent-requests", "1"), "--max-concurent-requests", "--max-concurrent-requests"),
        (("--model-id", "m", "--some-new-flag", "3"), "--some-new-flag", None),
        # TGI's router has it, not its launcher
        (("--max-image-fetch-size=7",), "--max-image-fetch-size", None),
    ],
)
def test_unknown_flags_exit_2_naming_them(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: tuple[str, ...],
    flag: str,
    tip: str | None,
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: unexpected argument '{flag}' found")  # clap's words, as TGI's launcher
    if tip is not None:
        assert f"tip: a similar argument exists: '{tip}'" in err


def test_router_rejects_unknown_flags(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser("router").parse_args(["router", "--prot", "3001"])
    assert exited.value.code == 2
    assert "error: unexpected argument '--prot' found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["launch", "router"])
def test_help_shows_env_and_defaults_and_version(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser(command).parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "port the router listens on [env: PORT=] [default: 3000]" in text
    assert "[env: PROMETHEUS_PORT=] [default: 9000]" in text
    assert "--max-batch-total-tokens MAX" in text or "--max-batch-total-tokens INT" in text
    with pytest.raises(SystemExit) as exited:
        build_parser(command).parse_args([command, "--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("tgi-async ")
