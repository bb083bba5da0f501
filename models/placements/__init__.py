"""The placement registry: one file per placement in this package, registered by name.

    @register("peri_ln", aliases=("sandwich_ln",))
    class PeriLN(Placement): ...

Every module of this package is imported on first use, so a new file is all a new placement needs;
a placement defined elsewhere registers the same way once its module is imported.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from models.config import ConfigError
from models.placements.base import Block, BlockLayout, Placement, SubLayout

PLACEMENTS: dict[str, type[Placement]] = {}
_loaded = False


def register(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type[Placement]], type[Placement]]:
    def wrap(cls: type[Placement]) -> type[Placement]:
        for key in (name, *aliases):
            if key in PLACEMENTS and PLACEMENTS[key] is not cls:
                raise ValueError(f"placement {key!r} is already registered by {PLACEMENTS[key]}")
            PLACEMENTS[key] = cls
        cls.name = name
        return cls

    return wrap


def load_all() -> dict[str, type[Placement]]:
    """Import every placement module of this package once; returns the registry."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return PLACEMENTS


def get_placement(name: str, **args: Any) -> Placement:
    """The placement `name` with its arguments; an unknown name lists the known ones."""
    load_all()
    if name not in PLACEMENTS:
        close = difflib.get_close_matches(name, PLACEMENTS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown placement {name!r}.{hint} Known placements: "
                          f"{', '.join(sorted(PLACEMENTS))}")
    return PLACEMENTS[name](**args)


__all__ = ["PLACEMENTS", "Block", "BlockLayout", "Placement", "SubLayout", "get_placement",
           "load_all", "register"]
