"""The placement registry: one file per placement in this package, registered by name.

    @register("peri_ln", aliases=("sandwich_ln",))
    class PeriLN(Placement):
        title = "Peri-LN"  # the readable name of tables and figures (default: the registered name)
        ...

Importing this package imports every module in its folder (the loop at the end of this file), so
`PLACEMENTS` is complete without any call and a new file is all a new placement needs. `base.py` and
modules whose name starts with "_" are not placements. A placement defined elsewhere registers the
same way once its module is imported.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from models.block import Block, BlockBase, BlockLayout, SubLayout
from models.config import ConfigError
from models.placements.base import Placement, arg

PLACEMENTS: dict[str, type[Placement]] = {}


def register(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type[Placement]], type[Placement]]:
    def wrap(cls: type[Placement]) -> type[Placement]:
        cls.check_declaration()
        for key in (name, *aliases):
            if key in PLACEMENTS and PLACEMENTS[key] is not cls:
                raise ValueError(f"placement {key!r} is already registered by {PLACEMENTS[key]}")
            PLACEMENTS[key] = cls
        cls.name = name
        if "title" not in vars(cls):  # inherited: PreLNEmbedNorm must not print as "Pre-LN"
            cls.title = name
        return cls

    return wrap


def load_all() -> dict[str, type[Placement]]:
    """The registry (kept for callers: importing this package already filled it)."""
    return PLACEMENTS


def get_placement(name: str, **args: Any) -> Placement:
    """The placement `name` with its arguments; an unknown name lists the known ones. Its
    `parse_args(mapping)` validates arguments without building anything."""
    if name not in PLACEMENTS:
        close = difflib.get_close_matches(name, PLACEMENTS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown placement {name!r}.{hint} Known placements: "
                          f"{', '.join(sorted(PLACEMENTS))}")
    return PLACEMENTS[name](**args)


__all__ = ["PLACEMENTS", "Block", "BlockBase", "BlockLayout", "Placement", "SubLayout", "arg",
           "get_placement", "load_all", "register"]

# Last, once `register` and the names above exist: each placement module imports them from here.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
