"""``budgetd gateway`` refuses to start, in one line, when it could not know who pays or its
settings are wrong."""

from __future__ import annotations

import pytest

from budgetd.cli import main


def test_gateway_needs_a_keys_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BUDGETD_KEYS_FILE", raising=False)
    monkeypatch.setenv("BUDGETD_POLICY_DIR", "policies")
    assert main(["gateway"]) == 2
    assert "budgetd gateway needs BUDGETD_KEYS_FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("BUDGETD_GATEWAY_READ_TIMEOUT_S", "soon", "not a number of seconds"),
        ("BUDGETD_GATEWAY_CONNECT_TIMEOUT_S", "0", "must be positive"),
        ("BUDGETD_GATEWAY_PORT", "http", "not a port number"),
    ],
)
def test_bad_gateway_settings_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    said: str,
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["gateway"]) == 2
    assert capsys.readouterr().err.strip() == f"budgetd: {name}={value!r}: {said}"
