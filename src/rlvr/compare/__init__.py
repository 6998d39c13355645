"""``rlvr compare``: isolated ablations of techniques over seeds ("tricks or traps").

- :mod:`rlvr.compare.study`  the study file (base config, arms of overrides, seeds), validated
- :mod:`rlvr.compare.runner` every arm x seed as a normal run, in parallel, resumable
- :mod:`rlvr.compare.report` results.md / results.csv / plots from the run folders
- :mod:`rlvr.compare.stats`  t intervals, Welch intervals, verdicts, curve bands (pure functions)
"""

from rlvr.compare.study import Study, load_study

__all__ = ["Study", "load_study"]
