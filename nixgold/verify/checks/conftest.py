"""Loaded by pytest whenever it collects this directory.

Under ``invoke verify`` the runner has registered :class:`~nixgold.verify.checks.plugin.NixgoldMode`
already; run by hand (``pytest --hosts=ssh://user@ip --ssh-identity-file=KEY nixgold/verify/checks/``)
this registers :class:`~nixgold.verify.checks.plugin.StandaloneMode` instead.
"""

from __future__ import annotations

import pytest

from nixgold.verify.checks.plugin import PLUGIN_NAME, NixgoldMode, StandaloneMode, add_options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    modes = (NixgoldMode, StandaloneMode)
    if not any(isinstance(p, modes) for p in config.pluginmanager.get_plugins()):
        config.pluginmanager.register(StandaloneMode(config), PLUGIN_NAME)
