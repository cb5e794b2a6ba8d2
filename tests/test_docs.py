"""The docs that are generated from code stay in sync with it."""

from __future__ import annotations

from pathlib import Path

from confstream.api.errors import markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_error_table_in_docs_matches_the_code() -> None:
    text = (DOCS / "errors.md").read_text()
    start = text.index("-->\n", text.index("<!-- generated")) + len("-->\n")
    end = text.index("\n<!-- end of generated table -->")
    assert text[start:end] == markdown_table()
