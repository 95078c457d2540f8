"""A payment workflow: validate, screen large amounts for fraud, charge, send a receipt.

Run it with a worker process:  squidmesh worker examples.payment
then start a run:              squidmesh runs start payment --payload '{"amount": 42}' --watch
"""

from __future__ import annotations

import hashlib
from typing import Any

from worker_sdk import Field, Retry, StepContext, Workflow, when
from worker_sdk.errors import NonRetryableError

payment = Workflow("payment", description="Validate, screen, charge and confirm a card payment")
payment.trigger(
    "manual",
    payload=[
        Field("amount", "number", required=True),
        Field("currency", "string", default="EUR"),
        Field("customer", "string", default="guest"),
    ],
)

FRAUD_REVIEW_ABOVE = 1000


@payment.task(output_key="validation", input=["amount", "currency"])
def validate(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    if input["amount"] <= 0:
        raise NonRetryableError(f"amount must be positive, got {input['amount']}")
    return {
        "amount": input["amount"],
        "currency": input["currency"].upper(),
        "risk": "high" if input["amount"] > FRAUD_REVIEW_ABOVE else "low",
    }


@payment.task(output_key="fraud", input={"amount": "validation.amount", "customer": "customer"})
async def fraud_check(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    # A real check would call a scoring service with ctx.idempotency_key.
    score = int(hashlib.sha256(input["customer"].encode()).hexdigest(), 16) % 100
    return {"score": score, "cleared": True}


@payment.task(
    output_key="charge",
    input=["validation", "customer"],
    retry=Retry(max_attempts=5, backoff="exponential", initial_delay=0.2),
    irreversible=True,
)
async def charge_card(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {
        "status": "captured",
        "amount": input["validation"]["amount"],
        "currency": input["validation"]["currency"],
        "charge_id": f"ch_{ctx.idempotency_key.replace(':', '_')[:24]}",
    }


@payment.task(output_key="receipt", input=["charge", "customer"])
def send_receipt(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    charge = input["charge"]
    return {"sent_to": input["customer"], "text": f"Paid {charge['amount']} {charge['currency']}"}


payment.transition("validate", "fraud_check", when=when("validation.risk").equals("high"))
payment.transition("validate", "charge_card")
payment.transition("fraud_check", "charge_card")
payment.transition("charge_card", "send_receipt")
payment.transition("send_receipt", "complete")
