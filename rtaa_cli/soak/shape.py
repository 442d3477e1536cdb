"""Load stages on Locust's own mechanism: a LoadTestShape whose ticks come from the scenario's
``[[stages]]`` (rtaa_cli.soak.scenario.stage_at holds the rule; this is the thin Locust shell)."""
from __future__ import annotations

from locust import LoadTestShape

from rtaa_cli.soak.scenario import stage_at


class StagesShape(LoadTestShape):
    """After the last stage it keeps that stage's users: the run's own clock stops new calls and lets
    the ones in flight finish (a ``None`` tick would make Locust stop every user at once)."""

    def __init__(self, stages: list[tuple[float, int]]) -> None:
        super().__init__()
        self.stages = stages

    def tick(self) -> tuple[int, float]:
        return stage_at(self.stages, self.get_run_time())
