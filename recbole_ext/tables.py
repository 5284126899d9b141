"""Result tables: mean ± std over seeds and markdown, one home for every table of the project.

- :func:`describe` -- per column of a frame: mean, sample std (ddof 1) and count (pandas);
- :func:`mean_std` -- the same for one list of values;
- :func:`mean_std_cell` -- the ``mean ± std`` text of a table cell;
- :func:`markdown_table` -- a GitHub markdown table (``DataFrame.to_markdown``, tabulate) in the
  compact layout of the committed result files: ``| a | b |`` rows under ``|---|---|``, cells
  written as given (no padding to a column width, no number parsing).

The harness (:mod:`recbole_ext.benchmark`), ExpCTR's results (:mod:`recbole_ext.expctr_results`)
and the scripts under ``benchmarks/`` write their tables with these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd
from tabulate import DataRow, TableFormat

# The committed tables' layout: no padding to column widths, a `|---|` rule per column.
COMPACT = TableFormat(
    lineabove=None,
    linebelowheader=lambda widths, aligns: "|" + "---|" * len(widths),
    linebetweenrows=None,
    linebelow=None,
    headerrow=DataRow("|", "|", "|"),
    datarow=DataRow("|", "|", "|"),
    padding=1,
    with_header_hide=None,
)


def describe(frame: pd.DataFrame) -> dict[str, tuple[float, float, int]]:
    """``{column: (mean, std, n)}``: mean and sample std (ddof 1) of each column's non-NaN values,
    ``n`` their count; the std of one value is 0, mean and std of none are NaN.

    >>> frame = pd.DataFrame({"auc": [0.5, 0.7, 0.6], "mae": [0.2, float("nan"), float("nan")]})
    >>> {k: tuple(round(x, 4) for x in v) for k, v in describe(frame).items()}
    {'auc': (0.6, 0.1, 3), 'mae': (0.2, 0.0, 1)}
    """
    stats = frame.astype(float).agg(["mean", "std", "count"])
    out = {}
    for column, (mean, std, count) in stats.items():
        n = int(count)
        out[column] = (float(mean), float(std) if n > 1 else 0.0 if n else math.nan, n)
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1) of ``values``, NaNs dropped; std 0 for one value, both NaN
    for none.

    >>> mean_std([0.5, 0.7, 0.6])  # std: sqrt((0.01 + 0.01 + 0) / 2)
    (0.6, 0.09999999999999998)
    >>> mean_std([0.5, float("nan")]), [math.isnan(v) for v in mean_std([])]
    ((0.5, 0.0), [True, True])
    """
    mean, std, _ = describe(pd.DataFrame({"v": list(values)}, dtype=float))["v"]
    return mean, std


def mean_std_cell(mean: float, std: float, digits: int = 4, n: int | None = None) -> str:
    """``mean ± std`` with ``digits`` decimals; the mean alone for ``n == 1`` (one seed: no
    spread to show); ``-`` for a NaN mean.

    >>> mean_std_cell(0.6, 0.1), mean_std_cell(0.6, 0.1, digits=3)
    ('0.6000 ± 0.1000', '0.600 ± 0.100')
    >>> mean_std_cell(0.5, 0.0, n=1), mean_std_cell(float("nan"), 0.0)
    ('0.5000', '-')
    """
    if math.isnan(mean):
        return "-"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: Iterable[Sequence], header: Sequence[str]) -> str:
    """A markdown table of ``rows`` (one sequence of cells each, as long as ``header``): cells as
    ``str`` gives them (``None``: empty), no trailing newline.

    Raises:
        ValueError: a row with another number of cells than ``header``.

    >>> print(markdown_table([["SASRec", "0.6000 ± 0.1000", None]], ["model", "ndcg@10", "note"]))
    | model | ndcg@10 | note |
    |---|---|---|
    | SASRec | 0.6000 ± 0.1000 |  |
    """
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {row}")
    frame = pd.DataFrame(cells, columns=list(header), dtype=object)
    return frame.to_markdown(
        index=False, tablefmt=COMPACT, stralign=None, numalign=None, disable_numparse=True
    )
