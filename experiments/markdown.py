"""A pipe table from a DataFrame without the optional ``tabulate`` dependency of ``DataFrame.to_markdown``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from search_spaces.io import atomic_write_text


def md_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """GitHub-flavoured markdown table; floats formatted with ``floatfmt``, other values with ``str``."""
    def cell(v) -> str:
        return floatfmt.format(v) if isinstance(v, float) else str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def report(stem: Path, rows: pd.DataFrame, lines: list[str]) -> None:
    """A benchmark's result: ``<stem>.csv`` (the rows) and ``<stem>.md`` (``lines``, one per line), each
    written atomically (the folder is made if needed), and the markdown printed."""
    md = "\n".join(lines) + "\n"
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".csv"), rows.to_csv(index=False))
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md, end="")
