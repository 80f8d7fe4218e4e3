"""Dataset -> scenarios -> the scenario groups of each training step."""

from producer.scenarios import LoadedScenarios, load_scenarios, scenario_from_row
from producer.schedule import Schedule

__all__ = ["LoadedScenarios", "Schedule", "load_scenarios", "scenario_from_row"]
