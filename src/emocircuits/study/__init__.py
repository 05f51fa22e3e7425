"""The whole study: :func:`run_study` plans the stages of a configuration
(:func:`load_config`), reuses the finished ones, runs the rest through the library and
returns a :class:`StudyResult`; the report is written at the end.

>>> from emocircuits.study import run_study
>>> res = run_study(models=["smollm2-135m"], out="runs/one")  # doctest: +SKIP
"""

from emocircuits.study.config import ConfigError, StudyConfig, load_config
from emocircuits.study.runner import StudyError, StudyResult, run_study

__all__ = ["ConfigError", "StudyConfig", "StudyError", "StudyResult", "load_config", "run_study"]
