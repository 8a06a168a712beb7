"""The TypeScript SDK (``@anthropic-ai/sdk``) and Claude Code (``@anthropic-ai/claude-code``),
both from npm (``npm ci`` in tests/gateway/node, which ``.ci/run`` does), unmodified, through
``budgetd gateway``: budgets move by exactly the fake upstream's usage, priced by the table,
and a denial reaches them as Anthropic's own error would, naming budgetd's scope."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import MODEL, Ledger, Setup, spent, upstream_log

NODE_DIR = Path(__file__).parent / "node"
CLAUDE = NODE_DIR / "node_modules" / "@anthropic-ai" / "claude-code-linux-x64" / "claude"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `npm ci` in {NODE_DIR} (.ci/run does)")


def node_sdk(setup: Setup, key: str, scenario: str) -> dict[str, Any]:
    _need(NODE_DIR / "node_modules" / "@anthropic-ai" / "sdk")
    node = shutil.which("node")
    assert node is not None, "node is not on PATH (Debian: apt-get install nodejs)"
    env = {**os.environ, "ANTHROPIC_BASE_URL": setup.gateway.url, "ANTHROPIC_API_KEY": key}
    done = subprocess.run(
        [node, "sdk_calls.mjs", scenario],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    answer: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return answer


def claude_code(
    setup: Setup, key: str, home: Path, prompt: str
) -> subprocess.CompletedProcess[str]:
    """``claude -p`` with ANTHROPIC_BASE_URL at the gateway, a fresh HOME, no extra traffic."""
    _need(CLAUDE)
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": setup.gateway.url,
        "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    return subprocess.run(
        [str(CLAUDE), "-p", prompt],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("scenario", ["create", "stream", "beta"])
async def test_typescript_sdk_is_charged_its_usage(
    gateway_setup: Setup, ledger: Ledger, scenario: str
) -> None:
    before = await ledger.settled(user="alice", feature="chat")
    answer = node_sdk(gateway_setup, gateway_setup.keys.app, scenario)
    assert answer["ok"], answer
    after = await ledger.settled(user="alice", feature="chat")
    seen = upstream_log(gateway_setup)[-1]
    assert answer["result"]["usage"]["output_tokens"] == seen["usage"]["output_tokens"]
    cost = ledger.price(MODEL, seen["usage"])
    assert spent(before, after) == {
        "org:org-month": cost,
        "user:user-day": cost,
        "feature:feature-day": cost,
    }
    if scenario == "beta":
        assert seen["headers"]["anthropic-beta"] == "fake-beta-2026"
    if scenario == "stream":
        assert seen["stream"] is True
        assert seen["usage"]["cache_read_input_tokens"] == 4000


async def test_typescript_sdk_catches_a_denial_naming_the_scope(
    gateway_setup: Setup, ledger: Ledger
) -> None:
    never = node_sdk(gateway_setup, gateway_setup.keys.poor_node, "never")
    assert never["ok"] is False
    assert never["isBadRequest"] is True, never
    assert "org budget 'tiny-month'" in never["message"]
    spend = node_sdk(gateway_setup, gateway_setup.keys.poor_node, "spend")
    assert spend["ok"], spend
    denied = node_sdk(gateway_setup, gateway_setup.keys.poor_node, "denied")
    assert denied["ok"] is False
    assert denied["isRateLimit"] is True, denied
    assert denied["status"] == 429
    assert "budgetd: budget exceeded" in denied["message"]
    assert "org budget 'tiny-month'" in denied["message"]
    assert int(denied["retryAfter"]) > 0
    assert (await ledger.settled("gw-poor-node"))["org:tiny-month"][1] == 0


async def test_claude_code_print_mode_is_charged_its_usage(
    gateway_setup: Setup, ledger: Ledger, tmp_path: Path
) -> None:
    before = await ledger.settled(user="alice", feature="chat")
    count = len(upstream_log(gateway_setup))
    done = claude_code(gateway_setup, gateway_setup.keys.app, tmp_path / "home", "say hi")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "hi"
    calls = upstream_log(gateway_setup)[count:]
    assert len(calls) == 1, calls
    call = calls[0]
    # What Claude Code sent, as it sent it: the beta route, its beta flags, a large body.
    assert (call["path"], call["query"], call["stream"]) == ("/v1/messages", "beta=true", True)
    assert "claude-code" in call["headers"]["anthropic-beta"]
    assert call["body_size"] > 20_000
    assert call["headers"]["x-api-key"] == "sk-ant-fake-upstream"
    after = await ledger.settled(user="alice", feature="chat")
    cost = ledger.price(call["model"], call["usage"])
    assert cost > 0
    assert spent(before, after) == {
        "org:org-month": cost,
        "user:user-day": cost,
        "feature:feature-day": cost,
    }


async def test_claude_code_shows_a_spent_budget_as_a_429_without_retrying(
    gateway_setup: Setup, ledger: Ledger, tmp_path: Path
) -> None:
    # Spend the org's $5 past its limit with one call ($6 of output) ...
    async with httpx.AsyncClient() as client:
        spend = await client.post(
            gateway_setup.gateway.url + "/v1/messages",
            headers={"x-api-key": gateway_setup.keys.spent_cc},
            json={
                "model": MODEL,
                "max_tokens": 1000,
                "messages": [{"role": "user", "content": "[fake:out=1200000]"}],
            },
            timeout=30,
        )
    assert spend.status_code == 200
    calls = len(upstream_log(gateway_setup))
    # ... then Claude Code's call fits the limit but not what is left: a 429 it shows, with
    # x-should-retry: false (the wait is the rest of the month), so it gives up at once.
    done = claude_code(gateway_setup, gateway_setup.keys.spent_cc, tmp_path / "home", "say hi")
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "429" in shown
    assert "budgetd: budget exceeded: org budget 'tiny-month'" in shown
    assert "spent $6.000" in shown
    assert len(upstream_log(gateway_setup)) == calls  # nothing reached Anthropic
    assert (await ledger.settled("gw-spent-cc"))["org:tiny-month"][1] == 0


async def test_claude_code_shows_a_denial_naming_the_scope(
    gateway_setup: Setup, tmp_path: Path
) -> None:
    done = claude_code(gateway_setup, gateway_setup.keys.poor_node, tmp_path / "home", "say hi")
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "budgetd" in shown
    assert "tiny-month" in shown
