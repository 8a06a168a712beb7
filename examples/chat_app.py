"""A terminal chat app with per-user budgets.

Every turn is reserved against the user's budget before it reaches Claude, and charged exactly
what the response's usage says. A user over budget is told when to come back instead.

    BUDGETD_URL=http://127.0.0.1:8080 ANTHROPIC_API_KEY=... \\
        python examples/chat_app.py --org acme --user alice
"""

from __future__ import annotations

import argparse
import os

import anthropic
from budgetd_client import BudgetdClient, BudgetExceeded, ServiceUnavailable, guard

MODEL = os.environ.get("CLAUDE_MODEL", "claude-haiku-4-5")
SYSTEM = [
    {
        "type": "text",
        "text": "You are a concise, friendly assistant.",
        # A cached system prompt: the guard reserves for a 5-minute cache write.
        "cache_control": {"type": "ephemeral"},
    }
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgetd", default=os.environ.get("BUDGETD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("BUDGETD_API_KEY"))
    parser.add_argument("--org", required=True)
    parser.add_argument("--user", required=True)
    args = parser.parse_args()

    budgetd = BudgetdClient(args.budgetd, api_key=args.api_key, fail_mode="closed")
    claude = guard(anthropic.Anthropic(), budgetd=budgetd, org=args.org, feature="chat")
    history: list[dict[str, str]] = []
    print(f"chatting as {args.user} (empty line quits)")
    while question := input("> ").strip():
        history.append({"role": "user", "content": question})
        try:
            # Charged to this user: a per-call header (or `with budgetd_client.scope(user=...)`).
            reply = claude.messages.create(
                model=MODEL,
                max_tokens=1024,
                system=SYSTEM,
                messages=history,
                extra_headers={"x-budgetd-user": args.user},
            )
        except anthropic.RateLimitError as limited:
            # budgetd's denial is an Anthropic 429 too: one handler for both.
            history.pop()
            if isinstance(limited, BudgetExceeded):
                names = ", ".join(f"{s.scope} {s.name}" for s in limited.scopes)
                wait = f"try in {limited.retry_after} s" if limited.retry_after else "ask an admin"
                print(f"[budget exceeded: {names}; {wait}]")
            else:
                print("[Anthropic rate limit: try again shortly]")
            continue
        except ServiceUnavailable as down:
            history.pop()
            print(f"[budget service unavailable, not calling Claude: {down.detail}]")
            continue
        text = "".join(block.text for block in reply.content if block.type == "text")
        history.append({"role": "assistant", "content": text})
        print(text)
        left = budgetd.budgets(org=args.org, user=args.user).scopes
        for scope in left:
            if scope.kind == "budget" and scope.scope == "user":
                print(f"[{scope.name}: ${scope.remaining / 1e6:.4f} left this {scope.period}]")


if __name__ == "__main__":
    main()
