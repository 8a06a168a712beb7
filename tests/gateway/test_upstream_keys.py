"""Each org's Anthropic key comes from a mounted secret or the environment, never a policy."""

from __future__ import annotations

from pathlib import Path

from budgetd.gateway.upstream_keys import UpstreamKeys, env_name


def test_secret_file_wins_then_org_variable_then_default(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "acme-research").write_text("sk-ant-from-file\n")
    env = {
        "BUDGETD_GATEWAY_UPSTREAM_KEY_ACME_RESEARCH": "sk-ant-acme-env",
        "BUDGETD_GATEWAY_UPSTREAM_KEY_BETA_CO": "sk-ant-beta-env",
        "BUDGETD_GATEWAY_UPSTREAM_KEY": "sk-ant-default",
    }
    keys = UpstreamKeys(secrets, env)
    assert keys.for_org("acme-research") == "sk-ant-from-file"
    assert keys.for_org("beta.co") == "sk-ant-beta-env"
    assert keys.for_org("gamma") == "sk-ant-default"
    # A rotated secret is read at the next call.
    (secrets / "acme-research").write_text("sk-ant-rotated")
    assert keys.for_org("acme-research") == "sk-ant-rotated"


def test_no_key_says_where_to_put_one(tmp_path: Path) -> None:
    keys = UpstreamKeys(tmp_path, {})
    assert keys.for_org("acme") is None
    assert (
        keys.where("acme")
        == f"{tmp_path}/acme or {env_name('acme')} or BUDGETD_GATEWAY_UPSTREAM_KEY"
    )
    assert env_name("acme") == "BUDGETD_GATEWAY_UPSTREAM_KEY_ACME"
