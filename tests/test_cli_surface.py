"""The CLI's user-facing surface is frozen: every verb of `periln`, each flag and positional with its
default, type, nargs, choices and action, compared with the checked-in tests/cli_surface.json. A
change to the surface is then a deliberate one: regenerate the snapshot (the command below) and
commit it with the change.

    python -m tests.test_cli_surface --update      (from the repository root)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from suite.cli import build_parser

SNAPSHOT = Path(__file__).with_name("cli_surface.json")
UPDATE = "python -m tests.test_cli_surface --update"


def _plain(value: Any) -> Any:
    """A default or choice as JSON: itself when JSON holds it, a path as text, else its repr."""
    if isinstance(value, Path):
        return str(value)
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def _argument(action: argparse.Action) -> dict[str, Any]:
    kind = type(action).__name__.strip("_").removesuffix("Action")  # _StoreTrueAction -> StoreTrue
    return {
        "flags": list(action.option_strings) or [action.dest],
        "dest": action.dest,
        "action": kind,
        "default": _plain(action.default),
        "type": getattr(action.type, "__name__", None if action.type is None else repr(action.type)),
        "nargs": action.nargs,
        "choices": None if action.choices is None else [_plain(c) for c in action.choices],
        "required": action.required,
    }


def surface() -> dict[str, list[dict[str, Any]]]:
    """Verb -> its arguments in declaration order (the help action left out: argparse adds it)."""
    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = {"": [_argument(a) for a in parser._actions
                if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]}
    for name, sub in verbs.choices.items():
        out[name] = [_argument(a) for a in sub._actions if not isinstance(a, argparse._HelpAction)]
    return out


def test_cli_surface_matches_the_snapshot():
    assert SNAPSHOT.exists(), f"{SNAPSHOT.name} is missing; create it with `{UPDATE}`"
    want, got = json.loads(SNAPSHOT.read_text()), surface()
    changes = [f"verb {v!r} added" for v in got if v not in want]
    changes += [f"verb {v!r} removed" for v in want if v not in got]
    for verb in (v for v in got if v in want):
        old = {a["dest"]: a for a in want[verb]}
        new = {a["dest"]: a for a in got[verb]}
        changes += [f"{verb or 'periln'}: {new[d]['flags'][0]} added" for d in new if d not in old]
        changes += [f"{verb or 'periln'}: {old[d]['flags'][0]} removed" for d in old if d not in new]
        changes += [f"{verb or 'periln'}: {new[d]['flags'][0]} {key}: {old[d][key]!r} -> {new[d][key]!r}"
                    for d in new if d in old for key in new[d] if new[d][key] != old[d].get(key)]
        if not changes and got[verb] != want[verb]:
            changes.append(f"{verb or 'periln'}: arguments reordered")
    assert not changes, ("the CLI surface changed: " + "; ".join(changes)
                         + f". If that is deliberate, run `{UPDATE}` and commit {SNAPSHOT.name}")


def test_snapshot_holds_the_verbs_and_flags_users_rely_on():
    """A few entries checked by hand, so the snapshot cannot silently lose what the README uses."""
    snap = json.loads(SNAPSHOT.read_text())
    assert {"train", "demo", "submit", "status", "tables", "placements", "sizes"} <= set(snap)
    demo = {a["dest"]: a for a in snap["demo"]}
    assert demo["out"]["flags"] == ["--out"] and demo["out"]["default"] == "results/demo"
    assert demo["eval_limit"]["type"] == "integer >= 1" and demo["eval_limit"]["default"] == 100
    assert demo["only"]["action"] == "Append" and demo["overrides"]["nargs"] == "*"
    assert {a["dest"]: a for a in snap["placements"]}["markdown"]["action"] == "StoreTrue"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        print(f"usage: {UPDATE}", file=sys.stderr)
        sys.exit(2)
    verbs = [f"  {json.dumps(verb)}: [" + ",".join(f"\n    {json.dumps(a)}" for a in args) + "]"
             for verb, args in surface().items()]
    SNAPSHOT.write_text("{\n" + ",\n".join(verbs) + "\n}\n")  # one line per argument: short diffs
    print(f"wrote {SNAPSHOT}")
