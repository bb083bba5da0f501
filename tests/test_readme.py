"""The README's generated parts match what the code generates."""

import contextlib
import io
import re
import sys
from pathlib import Path

from suite.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE = re.compile(r"(<!-- placements:start[^\n]*-->\n)(.*?)(<!-- placements:end -->)", re.S)
UPDATE = "python -m tests.test_readme --update"  # rewrites the table in README.md


def placement_table() -> str:
    """What `periln placements --markdown` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["placements", "--markdown"]) == 0
    return out.getvalue()


def test_placement_table_is_generated_from_the_registry():
    block = TABLE.search(README.read_text())
    assert block, "README lost its placements markers"
    assert block.group(2) == placement_table(), \
        f"README placement table is stale: regenerate it with `{UPDATE}`"


def test_readme_names_every_claim():
    # the README's list of claims is hand-written: a claim added to suite/claims.py must be named there
    from suite.claims import CLAIMS

    text = README.read_text()
    missing = [c.id for c in CLAIMS if f"`{c.id}`" not in text]
    assert not missing, f"README.md's claims section does not name {missing}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        print(f"usage: {UPDATE}", file=sys.stderr)
        sys.exit(2)
    text = README.read_text()
    README.write_text(TABLE.sub(lambda m: m.group(1) + placement_table() + m.group(3), text, count=1))
    print(f"wrote the placement table in {README}")
