"""Where client commands print. `--output json`: the protobuf JSON with the proto's field names
(snake_case, as grpcurl shows them), indented, or one object per line for streams. Text:
tables with a header, drawn by rich with colour on a terminal and as plain aligned columns in a
pipe (no colour codes, no wrapping: made for grep, awk and cut)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from rich.console import Console

Cell = str | tuple[str, str]
"""A table cell: its text, or its text and a rich style ("red", "bold green"...)."""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        self.rows.append(list(cells))


class Output:
    def __init__(self, mode: str) -> None:
        self.json = mode == "json"
        self._terminal = sys.stdout.isatty()
        self._console: Console | None = None

    def message(self, message: Message) -> None:
        print(_json(message, indent=2))

    def message_line(self, message: Message) -> None:
        """One message of a stream: one JSON object per line."""
        print(_json(message, indent=None), flush=True)

    def line(self, text: str = "", style: str = "") -> None:
        if self._terminal and style:
            self._rich().print(text, style=style, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def table(self, table: Table) -> None:
        if self._terminal:
            self._rich_table(table)
        else:
            _plain_table(table)

    def note(self, text: str) -> None:
        """A hint for the reader, kept out of the output a pipe reads."""
        print(text, file=sys.stderr)

    def _rich(self, width: int | None = None) -> Console:
        """The rich console of the terminal, or a wider one."""
        from rich.console import Console

        if width is not None:
            return Console(highlight=False, width=width)
        if self._console is None:
            self._console = Console(highlight=False)
        return self._console

    def _rich_table(self, table: Table) -> None:
        from rich import box
        from rich.table import Table as RichTable
        from rich.text import Text

        drawn = RichTable(
            box=box.SIMPLE_HEAD,
            header_style="bold",
            pad_edge=False,
            show_edge=False,
            collapse_padding=True,
        )
        # Ids, names and times stay whole; the last column, free text, wraps. A terminal too
        # narrow for that gets longer lines (it wraps them) rather than cut ids.
        texts = _texts(table)
        widths = [max(len(row[i]) for row in texts) for i in range(len(table.headers))]
        for header, width in zip(table.headers[:-1], widths, strict=False):
            drawn.add_column(header, no_wrap=True, width=width)
        drawn.add_column(table.headers[-1], overflow="fold")
        for row in table.rows:
            drawn.add_row(*(Text(c) if isinstance(c, str) else Text(c[0], style=c[1]) for c in row))
        console = self._rich()
        needed = sum(widths[:-1]) + 2 * len(widths) + min(widths[-1], 30)
        if needed > console.width:  # print() cannot go wider than the console
            console = self._rich(width=needed)
        console.print(drawn)


def _json(message: Message, indent: int | None) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=indent)


def _texts(table: Table) -> list[list[str]]:
    """The header and the rows, as plain text."""
    return [table.headers, *([c if isinstance(c, str) else c[0] for c in r] for r in table.rows)]


def _plain_table(table: Table) -> None:
    rows = _texts(table)
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.headers))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
