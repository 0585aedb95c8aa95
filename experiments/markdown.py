"""A pipe table from a DataFrame without the optional ``tabulate`` dependency of ``DataFrame.to_markdown``."""

from __future__ import annotations

import pandas as pd


def md_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """GitHub-flavoured markdown table; floats formatted with ``floatfmt``, other values with ``str``."""
    def cell(v) -> str:
        return floatfmt.format(v) if isinstance(v, float) else str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
