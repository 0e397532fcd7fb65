"""The one table writer: markdown tables from rows (dicts), used by ``explain``, the sensitivity
scan, compile-check and every benchmark report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

__all__ = ["format_cell", "markdown_table"]


def format_cell(v: object, floatfmt: str = "{:.3g}") -> str:
    """``None`` -> empty, floats through ``floatfmt``, everything else ``str``."""
    if v is None:
        return ""
    if isinstance(v, float):
        return floatfmt.format(v)
    return str(v)


def markdown_table(rows: Iterable[dict], columns: Sequence[str], fmt: Callable[[object], str] | None = None,
                   floatfmt: str = "{:.3g}") -> str:
    """A markdown table with one line per row and the given columns (missing cells are empty).

    Args:
        rows: dicts; each contributes one line.
        columns: the keys to show, in order (the header).
        fmt: cell formatter (default :func:`format_cell` with ``floatfmt``).
        floatfmt: ``str.format`` pattern for floats when ``fmt`` is not given.

    Example:
        >>> print(markdown_table([{"a": 1, "b": 0.5}], ["a", "b"]))
        | a | b |
        |---|---|
        | 1 | 0.5 |
    """
    cell = fmt or (lambda v: format_cell(v, floatfmt))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
