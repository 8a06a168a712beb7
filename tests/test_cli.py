"""The ``budgetd`` command line, called in-process through ``main(argv)``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetd.cli import build_parser, main, schema_text
from budgetd.policy.schema import json_schema

HERE = Path(__file__).parent
TEST_PRICING = str(HERE / "data" / "pricing.yaml")

GOOD = """\
org: acme
timezone: UTC
budgets:
  - {name: daily, scope: org, limit_usd: 5, period: day}
"""


def test_policy_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "acme.yaml").write_text(GOOD)
    (tmp_path / "globex.yaml").write_text(GOOD.replace("acme", "globex"))
    assert main(["policy", "validate", str(tmp_path), "--pricing", TEST_PRICING]) == 0
    out, err = capsys.readouterr()
    assert out == "OK: 2 org(s) in 2 file(s)\n"
    assert err == ""


def test_policy_validate_lists_each_error_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "acme.yaml").write_text(GOOD.replace("limit_usd: 5", "limit_usd: -5"))
    (tmp_path / "globex.yaml").write_text(GOOD.replace("org: acme", "org: globex\nbudget: []"))
    assert main(["policy", "validate", str(tmp_path), "--pricing", TEST_PRICING]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{tmp_path / 'acme.yaml'}:4: budgets[0].limit_usd: must not be negative (got -5)",
        f"{tmp_path / 'globex.yaml'}:2: budget: unknown key 'budget' "
        "(check the spelling; see policies/schema.json)",
    ]


def test_policy_validate_defaults_to_policies_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "acme.yaml").write_text(GOOD)
    (tmp_path / "policies" / "pricing.yaml").write_text(Path(TEST_PRICING).read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["policy", "validate"]) == 0
    assert capsys.readouterr().out == "OK: 1 org(s) in 1 file(s)\n"


def test_policy_validate_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "validate", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"budgetd: {tmp_path / 'nope'}: not a directory\n"


def test_policy_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    out = capsys.readouterr().out
    assert out == schema_text()
    assert json.loads(out) == json_schema()


def test_cost_prints_a_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    usage = json.dumps(
        {
            "input_tokens": 1000,
            "output_tokens": 2000,
            "cache_read_input_tokens": 3,
            "server_tool_use": {"web_search_requests": 1},
        }
    )
    code = main(["cost", "claude-opus-test-20260101", "--usage", usage, "--pricing", TEST_PRICING])
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "model:   claude-opus-test",
        "prices:  test-1, entry of 2026-01-01",
        "applied: standard",
        "",
        "kind                quantity                 USD",
        "input                  1,000           $0.005000",
        "output                 2,000           $0.050000",
        "cache_write_5m             0           $0.000000",
        "cache_write_1h             0           $0.000000",
        "cache_read                 3          $0.0000015",
        "web_search                 1           $0.010000",
        "total                                  $0.065002",
        "cost_micros                                65002",
    ]


def test_cost_json_with_batch(capsys: pytest.CaptureFixture[str]) -> None:
    usage = '{"input_tokens": 1, "inference_geo": "us"}'
    argv = ["cost", "claude-opus-test", "--usage", usage, "--batch", "--json"]
    code = main([*argv, "--pricing", TEST_PRICING])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # 5 micros · 50 % · 1.1 = 2.75 → 3
    assert out["cost_micros"] == 3
    assert out["cost_usd"] == "0.000003"
    assert out["batch"] is True and out["us_inference"] is True
    assert out["lines"][0] == {"kind": "input", "quantity": 1, "picos": 2_750_000}


def test_cost_on_a_date_uses_the_old_price(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["cost", "claude-sonnet-test", "--usage", '{"cache_read_input_tokens": 100000}']
    assert main([*args, "--on", "2026-09-30", "--json", "--pricing", TEST_PRICING]) == 0
    assert json.loads(capsys.readouterr().out)["cost_micros"] == 30_000
    assert main([*args, "--json", "--pricing", TEST_PRICING]) == 0
    assert json.loads(capsys.readouterr().out)["cost_micros"] == 15_000


def test_cost_unknown_model_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "claude-nope", "--usage", "{}", "--pricing", TEST_PRICING]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "budgetd: model 'claude-nope' is not in the pricing table (add it or map an alias)\n"
    )


def test_cost_bad_usage_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["cost", "claude-opus-test", "--usage", '{"input_tokens": -1}',
                 "--pricing", TEST_PRICING])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("budgetd: --usage is not a valid usage object: ")
    assert "input_tokens" in err


def test_cost_missing_pricing_file_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "pricing.yaml"
    assert main(["cost", "m", "--usage", "{}", "--pricing", str(missing)]) == 1
    assert capsys.readouterr().err == f"budgetd: {missing}: pricing table not found\n"


def test_pricing_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pricing", "--pricing", TEST_PRICING]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "pricing test-1: USD per million tokens; batch -50%; web search $10.000000 per 1,000"
    )
    assert lines[2].split() == [
        "MODEL", "FAMILY", "STATUS", "EFFECTIVE", "BAND",
        "INPUT", "OUTPUT", "WRITE-5M", "WRITE-1H", "READ", "US-GEO",
    ]  # fmt: skip
    rows = [line.split() for line in lines[3:]]
    assert rows == [
        ["claude-opus-test", "opus", "active", "2026-01-01", "standard",
         "5", "25", "6.25", "10", "0.5", "x1.1"],
        ["fast", "30", "150", "37.5", "60", "3", "x1.1"],
        ["=", "claude-opus-test-20260101"],
        ["claude-sonnet-test", "sonnet", "active", "2026-10-01", "standard",
         "3", "15", "3.75", "6", "0.15", "-"],
        [">200,000", "prompt", "6", "22.5", "7.5", "12", "0.3", "-"],
        ["2025-09-29", "standard", "3", "15", "3.75", "6", "0.3", "-"],
        [">200,000", "prompt", "6", "22.5", "7.5", "12", "0.6", "-"],
        ["claude-haiku-test", "haiku", "active", "2025-10-15", "standard",
         "1", "5", "1.25", "2", "0.1", "-"],
    ]  # fmt: skip


def test_every_subcommand_sets_a_handler() -> None:
    parser = build_parser()
    for argv in (["policy", "validate"], ["policy", "schema"], ["cost", "m", "--usage", "{}"],
                 ["pricing"]):  # fmt: skip
        assert callable(parser.parse_args(argv).handler)


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
