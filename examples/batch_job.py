"""A Message Batches job under a budget.

The guarded client reserves every request of the batch at submit (its worst case at the
batch price, held for up to 24 hours) and settles each request when its result is read:
succeeded ones are charged their usage at the batch price, errored, canceled and expired ones
give their hold back. ``settle_batch`` waits for the batch to end and reads the results.
Results are recorded under ``batch.<batch id>.<custom id>``, so reading them again (or from
another process, ``--batch-id``) never charges twice.

    BUDGETD_URL=http://127.0.0.1:8080 python examples/batch_job.py --org acme --feature nightly
    python examples/batch_job.py --org acme --feature nightly --batch-id msgbatch_...  # settle only
"""

from __future__ import annotations

import argparse
import os

import anthropic
from budgetd_client import BudgetdClient, guard, settle_batch

MODEL = os.environ.get("CLAUDE_MODEL", "claude-haiku-4-5")
QUESTIONS = ["What is 2+2?", "Name a prime above 100.", "Capital of Portugal?"]


def submit(claude: anthropic.Anthropic) -> str:
    batch = claude.messages.batches.create(
        requests=[
            {
                "custom_id": f"q{i}",
                "params": {
                    "model": MODEL,
                    "max_tokens": 256,
                    "messages": [{"role": "user", "content": q}],
                },
            }
            for i, q in enumerate(QUESTIONS)
        ]
    )
    return batch.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgetd", default=os.environ.get("BUDGETD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("BUDGETD_API_KEY"))
    parser.add_argument("--org", required=True)
    parser.add_argument("--feature", default="batch")
    parser.add_argument("--batch-id", help="settle the results of an existing batch")
    args = parser.parse_args()

    with BudgetdClient(args.budgetd, api_key=args.api_key) as budgetd:
        claude = guard(anthropic.Anthropic(), budgetd=budgetd, org=args.org, feature=args.feature)
        batch_id = args.batch_id or submit(claude)
        print(f"batch {batch_id}")
        settled = settle_batch(claude, batch_id, poll_s=30)
        print(f"results: {settled.counts}")
        for scope in budgetd.budgets(org=args.org, feature=args.feature).scopes:
            if scope.kind == "budget":
                print(f"{scope.name}: spent ${(scope.spent_micros or 0) / 1e6:.6f}")


if __name__ == "__main__":
    main()
