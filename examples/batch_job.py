"""A batch job that records its usage after the fact.

Message Batches run asynchronously, so there is nothing to reserve around: submit the batch,
wait for it, then record each result's usage through ``POST /v1/usage`` (priced at the batch
discount). Each record's id is derived from the batch and the request's ``custom_id``, so a job
that crashes and re-runs its recording step never charges a result twice.

    BUDGETD_URL=http://127.0.0.1:8080 python examples/batch_job.py --org acme --feature nightly
    python examples/batch_job.py --org acme --feature nightly --batch-id msgbatch_...  # record only
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import anthropic
from budgetd_client import BudgetdClient

MODEL = os.environ.get("CLAUDE_MODEL", "claude-haiku-4-5")
QUESTIONS = ["What is 2+2?", "Name a prime above 100.", "Capital of Portugal?"]


def submit(client: anthropic.Anthropic) -> str:
    batch = client.messages.batches.create(
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


def wait(client: anthropic.Anthropic, batch_id: str) -> None:
    while client.messages.batches.retrieve(batch_id).processing_status != "ended":
        time.sleep(30)


def record(
    client: anthropic.Anthropic, budgetd: BudgetdClient, batch_id: str, org: str, feature: str
) -> int:
    total = 0
    for item in client.messages.batches.results(batch_id):
        if item.result.type != "succeeded":
            continue  # errored / expired / canceled requests are not billed
        message = item.result.message
        key = hashlib.sha256(f"{batch_id}/{item.custom_id}".encode()).hexdigest()[:32]
        recorded = budgetd.record_usage(
            org=org,
            feature=feature,
            model=message.model,
            usage=message.usage,  # verbatim; service_tier "batch" also says so
            batch=True,
            record_id=f"batch.{key}",
            metadata={"batch_id": batch_id, "custom_id": item.custom_id},
        )
        total += recorded.cost_micros
        note = " (already recorded)" if recorded.replayed else ""
        print(f"{item.custom_id}: {recorded.cost_micros} micros{note}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgetd", default=os.environ.get("BUDGETD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("BUDGETD_API_KEY"))
    parser.add_argument("--org", required=True)
    parser.add_argument("--feature", default="batch")
    parser.add_argument("--batch-id", help="record the results of an existing batch")
    args = parser.parse_args()

    client = anthropic.Anthropic()
    with BudgetdClient(args.budgetd, api_key=args.api_key, retries=5) as budgetd:
        batch_id = args.batch_id or submit(client)
        print(f"batch {batch_id}")
        wait(client, batch_id)
        total = record(client, budgetd, batch_id, args.org, args.feature)
        print(f"recorded ${total / 1e6:.6f}")


if __name__ == "__main__":
    main()
