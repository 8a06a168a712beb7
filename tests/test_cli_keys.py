"""``budgetd keys new | list | revoke``: names and orgs checked, the file kept loadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetd.auth import KeyRing
from budgetd.cli import main
from tests.api.conftest import write_policy
from tests.engine.conftest import ACME


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    write_policy(directory, ACME)
    return directory


def test_new_checks_the_org_and_the_name(
    tmp_path: Path, policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.yaml"
    base = ["keys", "new", "--file", str(keys), "--policy-dir", str(policy_dir)]
    assert main([*base, "--org", "nobody"]) == 1
    err = capsys.readouterr().err
    assert err == f"budgetd: org 'nobody' has no policy in {policy_dir} (orgs: acme)\n"
    assert main([*base, "--org", "bad org!"]) == 1
    assert "org 'bad org!' has the wrong format: expected a name of up to 64" in (
        capsys.readouterr().err
    )
    assert main([*base, "--org", "acme", "--name", "no spaces"]) == 1
    assert "name 'no spaces' has the wrong format" in capsys.readouterr().err
    assert not keys.exists()
    assert main([*base, "--org", "acme", "--name", "checkout"]) == 0
    assert main([*base, "--org", "acme", "--name", "checkout"]) == 1
    assert "a key named 'checkout' is already in" in capsys.readouterr().err


def test_list_and_revoke(
    tmp_path: Path, policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.yaml"
    base = ["--file", str(keys), "--policy-dir", str(policy_dir)]
    assert main(["keys", "new", "--org", "acme", "--name", "checkout", *base]) == 0
    assert main(["keys", "new", "--org", "acme", "--role", "admin", "--name", "ops", *base]) == 0
    checkout, ops = capsys.readouterr().out.split()
    assert main(["keys", "list", "--file", str(keys)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listed[1:]] == [
        ["checkout", "acme", "app"],
        ["ops", "acme", "admin"],
    ]
    assert main(["keys", "revoke", "checkout", "--file", str(keys)]) == 0
    ring = KeyRing.load(keys)
    assert ring.authenticate(f"Bearer {ops}").name == "ops"
    with pytest.raises(Exception, match="unknown API key"):
        ring.authenticate(f"Bearer {checkout}")
    assert main(["keys", "revoke", "checkout", "--file", str(keys)]) == 1
    assert "no key named 'checkout'" in capsys.readouterr().err


def test_new_refuses_a_malformed_org_without_being_told_where_the_policies_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The org's format is checked before (and without) the policy directory: `keys new` used to
    # write `org: bad org!` into the file, a key no request could ever use.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUDGETD_POLICY_DIR", raising=False)
    keys = tmp_path / "keys.yaml"
    assert main(["keys", "new", "--file", str(keys), "--org", "bad org!"]) == 1
    assert "org 'bad org!' has the wrong format" in capsys.readouterr().err
    assert not keys.exists()
