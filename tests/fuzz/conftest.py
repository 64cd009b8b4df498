"""The fuzz suites' settings and world (``tests.support.world``)."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.support.world import World  # noqa: F401 - what the fixture ``world`` (tests/conftest.py) gives

# Bounded so the whole fuzz suite stays well under a minute in CI; raise it locally to hunt:
# TRIALFLOW_FUZZ_EXAMPLES=2000 pytest tests/fuzz
EXAMPLES = int(os.environ.get("TRIALFLOW_FUZZ_EXAMPLES", "40"))
# Derandomized, so CI runs the same examples every time; TRIALFLOW_FUZZ_RANDOM=1 draws new ones.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("TRIALFLOW_FUZZ_RANDOM"),
                database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
