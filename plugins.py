"""Plugins: code the server's administrator adds without editing the project.

A plugin is a Python module that, when imported, registers gymnasium environments (``gymnasium.register``) and
reward functions (``@rewards.reward_function(..., name="...")``). The server imports, at start-up:

- the modules named in ``GRPO_PLUGINS`` / ``--plugins`` (comma-separated, e.g. ``mypkg.envs,mypkg.rewards``);
- every entry point of the groups ``grpo.envs`` and ``grpo.rewards`` of the installed packages (in a package's
  ``pyproject.toml``: ``[project.entry-points."grpo.envs"] mypkg = "mypkg.envs"``); an entry point that names a
  function rather than a module is called once, with no arguments.

A plugin that fails to import stops the start-up with its error: a server that silently lacks an environment its
users expect is worse than one that does not start. Requests never name code to import; they name environments
and reward functions that plugins registered.
"""

import importlib
import logging
from collections.abc import Sequence
from importlib.metadata import entry_points
from types import ModuleType

logger = logging.getLogger("grpo.plugins")

ENTRY_POINT_GROUPS = ("grpo.envs", "grpo.rewards")


class PluginError(RuntimeError):
    """A plugin that could not be loaded; the server does not start."""


def load_plugins(modules: Sequence[str] = (), groups: Sequence[str] = ENTRY_POINT_GROUPS) -> list[str]:
    """Import the named modules, then load the entry points of ``groups``; returns what was loaded, in order.
    Loading the same plugin twice is harmless (Python imports a module once)."""
    loaded = []
    for module in modules:
        _import(module, f"plugin module {module!r}")
        loaded.append(module)
    for group in groups:
        for entry_point in entry_points(group=group):
            label = f"entry point {entry_point.name!r} ({entry_point.value}) of group {group!r}"
            try:
                target = entry_point.load()
                if not isinstance(target, ModuleType) and callable(target):
                    target()
            except Exception as error:  # whatever a third-party plugin raises stops the start-up, with its reason
                raise PluginError(f"{label} failed: {type(error).__name__}: {error}") from error
            loaded.append(entry_point.value)
    if loaded:
        logger.info("plugins loaded: %s", ", ".join(loaded))
    return loaded


def _import(module: str, label: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as error:  # an ImportError, or anything the module's own code raises while it runs
        raise PluginError(f"{label} failed to import: {type(error).__name__}: {error}") from error
