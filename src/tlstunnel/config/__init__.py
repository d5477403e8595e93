"""Reading stunnel configuration files into the frozen model in ``model``.

Public entry points: ``load_file``, ``load_fd`` and ``load_text`` (all in ``build``),
which return a ``LoadResult`` (the ``Config`` plus notices for options that have no
effect) or raise ``ConfigError`` listing every problem found.
"""

from tlstunnel.config.build import LoadResult, load_fd, load_file, load_text
from tlstunnel.config.errors import ConfigError, Problem
from tlstunnel.config.model import Config, GlobalConfig, ServiceConfig

__all__ = [
    "Config",
    "ConfigError",
    "GlobalConfig",
    "LoadResult",
    "Problem",
    "ServiceConfig",
    "load_fd",
    "load_file",
    "load_text",
]
