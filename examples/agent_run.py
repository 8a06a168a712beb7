"""Record what a Claude Agent SDK run spent (needs ``pip install claude-agent-sdk``).

BUDGETD_URL=http://127.0.0.1:8080 python examples/agent_run.py --org acme --user alice "..."
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from budgetd_client import AsyncBudgetdClient, arecord_agent_result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgetd", default=os.environ.get("BUDGETD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("BUDGETD_API_KEY"))
    parser.add_argument("--org", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("prompt")
    args = parser.parse_args()

    from claude_agent_sdk import query  # noqa: PLC0415 - optional dependency of this example

    async with AsyncBudgetdClient(args.budgetd, api_key=args.api_key) as budgetd:
        # Check there is budget left before starting a run budgetd cannot interrupt.
        for scope in (await budgetd.budgets(org=args.org, user=args.user)).scopes:
            if scope.kind == "budget" and scope.remaining <= 0:
                raise SystemExit(f"{scope.scope} budget {scope.name} is spent")
        messages: list[Any] = [m async for m in query(prompt=args.prompt)]
        recorded = await arecord_agent_result(
            budgetd, messages, org=args.org, user=args.user, feature="agent"
        )
        print(f"charged ${recorded.charged_micros / 1e6:.6f} over {len(recorded.records)} calls")
        if recorded.sdk_cost_micros is not None:
            print(f"(the SDK estimated ${recorded.sdk_cost_micros / 1e6:.6f})")


if __name__ == "__main__":
    asyncio.run(main())
