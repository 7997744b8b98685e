"""Shared test settings: hypothesis profiles.

CI runs the "ci" profile: derandomised, so every run draws the same examples, with each property
test's own fixed budget. `pytest --hypothesis-profile=long` (or HYPOTHESIS_PROFILE=long) explores
ten times more examples, for local runs.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def example_budget(ci_examples: int) -> int:
    """A property test's number of examples: its fixed CI budget, ten times that in "long"."""
    return ci_examples if settings.default.derandomize else 10 * ci_examples
