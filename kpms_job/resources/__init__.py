"""Memory: what this machine has, what a fit needs, and which setting a fit runs with.

- :mod:`.machine`: GPUs, system memory and the budget, found without importing JAX; JAX's
  GPU memory fraction set from the budget before JAX starts.
- :mod:`.model`: the memory model of a fit, pure arithmetic (no JAX): a fit's shape and
  its peak memory at a setting.
- :mod:`.ladder`: the settings from the fastest to the most frugal and the choice among
  them for a budget (pure too).
- :mod:`.planner`: the setting a fit runs with, and what happens after an out-of-memory
  error; the one reader of the past attempts in the job state.
- :mod:`.report`: ``kpms-job plan``'s memory part, from the same planner.

The model's coefficients are measured by ``tools/calibrate_memory.py``, a developer tool
outside this package.
"""
