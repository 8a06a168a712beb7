"""A streaming call under a budget, async.

The guard reserves before the stream opens and commits the final cumulative usage when it
ends; stop reading early (Ctrl-C, or --stop-after) and what was generated so far is charged.

    BUDGETD_URL=http://127.0.0.1:8080 python examples/streaming.py --org acme --user alice
"""

from __future__ import annotations

import argparse
import asyncio
import os

import anthropic
from budgetd_client import AsyncBudgetdClient, guard

MODEL = os.environ.get("CLAUDE_MODEL", "claude-sonnet-4-5")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgetd", default=os.environ.get("BUDGETD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("BUDGETD_API_KEY"))
    parser.add_argument("--org", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--stop-after", type=int, default=0, help="stop after N text chunks")
    parser.add_argument("prompt", nargs="?", default="Write a haiku about budgets.")
    args = parser.parse_args()

    async with AsyncBudgetdClient(args.budgetd, api_key=args.api_key) as budgetd:
        claude = guard(
            anthropic.AsyncAnthropic(),
            budgetd=budgetd,
            org=args.org,
            user=args.user,
            feature="streaming",
        )
        async with claude.messages.stream(
            model=MODEL, max_tokens=2048, messages=[{"role": "user", "content": args.prompt}]
        ) as stream:
            chunks = 0
            async for text in stream.text_stream:
                print(text, end="", flush=True)
                chunks += 1
                if args.stop_after and chunks >= args.stop_after:
                    print("\n[stopped early: the tokens so far are still charged]")
                    break
            print()
        budgets = await budgetd.budgets(org=args.org, user=args.user)
        for scope in budgets.scopes:
            if scope.kind == "budget":
                print(
                    f"{scope.scope:8} {scope.name:16} spent ${(scope.spent_micros or 0) / 1e6:.6f}"
                )


if __name__ == "__main__":
    asyncio.run(main())
