"""The README's generated parts match what the code generates."""

import re
from pathlib import Path

from suite.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_placement_table_is_generated_from_the_registry(capsys):
    assert main(["placements", "--markdown"]) == 0
    table = capsys.readouterr().out
    block = re.search(r"<!-- placements:start[^\n]*-->\n(.*?)<!-- placements:end -->",
                      README.read_text(), re.S)
    assert block, "README lost its placements markers"
    assert block.group(1) == table, "README placement table is stale: paste `periln placements --markdown`"


def test_readme_names_every_claim():
    # the README's list of claims is hand-written: a claim added to suite/claims.py must be named there
    from suite.claims import CLAIMS

    text = README.read_text()
    missing = [c.id for c in CLAIMS if f"`{c.id}`" not in text]
    assert not missing, f"README.md's claims section does not name {missing}"
