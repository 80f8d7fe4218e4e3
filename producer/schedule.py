"""Which tasks each training step uses: a pure function of the step number.

Epoch `e` visits every task once in an order shuffled with `seed + e`; step `k` takes the
next `groups_per_step` of that sequence. Because it depends only on `k`, a resumed run continues
exactly where it stopped without repeating tasks. Over-provisioned extra groups of step `k`
(`extra_tasks`) are drawn from the other tasks, also as a pure function of `k`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from producer.tasks import Task


@dataclass
class Schedule:
    tasks: list[Task]
    groups_per_step: int
    num_epochs: int
    seed: int
    _orders: dict[int, list[int]] = field(default_factory=dict, repr=False)

    @property
    def total_steps(self) -> int:
        """Whole steps in all epochs; a last partial step is dropped."""
        return len(self.tasks) * self.num_epochs // self.groups_per_step

    def tasks_for_step(self, step: int) -> list[Task]:
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} outside 0..{self.total_steps - 1}")
        n = len(self.tasks)
        start = step * self.groups_per_step
        return [
            self.tasks[self._order(i // n)[i % n]]
            for i in range(start, start + self.groups_per_step)
        ]

    def extra_tasks(self, step: int, count: int) -> list[Task]:
        """`count` more tasks for step `k` (stragglers' spares): others than the step's own
        where the dataset has enough of them."""
        if count == 0:
            return []
        own = {id(task) for task in self.tasks_for_step(step)}
        others = [t for t in self.tasks if id(t) not in own] or list(self.tasks)
        rng = random.Random(f"{self.seed}-extra-{step}")
        if len(others) >= count:
            return rng.sample(others, count)
        return [rng.choice(others) for _ in range(count)]

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.tasks)))
            random.Random(self.seed + epoch).shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]
