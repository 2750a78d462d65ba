"""``run.budget_usd``: never start a call that could take the spend past the budget.

Before a call goes out, its worst case is reserved: the estimated input tokens and the most
output tokens the request allows, at the model's price. Spend so far (the rows already in the
output count too: a resumed job is the same job) plus what calls in flight have reserved plus
this call must stay within the budget, or the call is not made and the run stops cleanly. When
a reply arrives its reservation is replaced by its cost from the reported usage.
"""

from __future__ import annotations

from ..recipe.pricing import Price
from ..recipe.tokens import estimate
from ..values import Prompt, Usage


class Budget:
    """Spend, reservations and the limit, in USD."""

    def __init__(self, limit_usd: float, price: Price, spent_usd: float = 0.0) -> None:
        self.limit = limit_usd
        self.price = price
        self.spent = spent_usd
        self.reserved = 0.0
        self.reached = False  # a call was refused: the run is stopping

    def reason(self, this_run_usd: float) -> str:
        """Why the run stopped, for the summary and the manifest."""
        return (
            f"run.budget_usd {self.limit:g} reached: spent ${self.spent:.4f} "
            f"(this run ${this_run_usd:.4f}); the next call could have exceeded it"
        )

    def worst_case(self, prompt: Prompt) -> float:
        input_tokens, output_tokens = estimate(prompt)
        members = prompt.group or (prompt,)
        if prompt.group:
            input_tokens = sum(estimate(p)[0] for p in members)
        cost = self.price.cost(Usage(input_tokens=input_tokens, output_tokens=output_tokens))
        return cost or 0.0

    def reserve(self, amount: float) -> bool:
        """Hold ``amount`` for a call; False (and ``reached``) when it does not fit."""
        if self.spent + self.reserved + amount > self.limit + 1e-12:
            self.reached = True
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, cost: float | None) -> None:
        """The call is over: drop its reservation and count what it cost (None: nothing
        billed, e.g. it failed)."""
        self.reserved = max(0.0, self.reserved - reserved)
        if cost:
            self.spent += cost
