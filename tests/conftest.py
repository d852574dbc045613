"""Settings for the whole suite."""

from hypothesis import settings

# Property tests check results, not time: Hypothesis's per-example deadline (200 ms) fails
# a correct example when the 2-core machine is busy with the integration stacks.
settings.register_profile("sluice", deadline=None)
settings.load_profile("sluice")
