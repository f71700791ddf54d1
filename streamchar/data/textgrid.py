"""Praat TextGrid files (as the Montreal Forced Aligner writes them): read both the long and the
short text formats, write the long one.

Both formats carry the same sequence of values; the long one labels them (``xmin = 0``) and adds
header lines (``item [1]:``, ``intervals [3]:``). Reading strips labels and headers and parses the
value sequence, so one parser serves both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


class TextGridError(ValueError):
    """A TextGrid that cannot be parsed."""


@dataclass
class Tier:
    name: str
    kind: str  # IntervalTier | TextTier
    xmin: float
    xmax: float
    items: list[tuple[float, float, str]] = field(
        default_factory=list
    )  # (start, end, label); points: start == end


@dataclass
class TextGrid:
    xmin: float
    xmax: float
    tiers: list[Tier]

    def tier(self, *names: str) -> Tier | None:
        """The first tier whose name matches one of ``names`` (case-insensitive)."""
        wanted = [n.lower() for n in names]
        for tier in self.tiers:
            if tier.name.lower() in wanted:
                return tier
        return None


_HEADER = re.compile(r"^\w+ \[\d*\]:?$")


def _tokens(text: str) -> list[str | float]:
    tokens: list[str | float] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or _HEADER.match(line):
            continue
        if line.startswith("tiers?"):
            tokens.append("<exists>")
            continue
        if "=" in line and not line.startswith('"'):
            line = line.split("=", 1)[1].strip()
        if line.startswith('"'):
            if not line.endswith('"') or len(line) < 2:
                raise TextGridError(f"unterminated string: {raw.strip()[:40]}")
            tokens.append(line[1:-1].replace('""', '"'))
        elif line == "<exists>":
            tokens.append(line)
        else:
            try:
                tokens.append(float(line))
            except ValueError as err:
                raise TextGridError(f"unexpected line: {raw.strip()[:40]}") from err
    return tokens


def parse_textgrid(text: str) -> TextGrid:
    tokens = _tokens(text.lstrip("\ufeff"))
    pos = 0

    def take(kind: type):
        nonlocal pos
        if pos >= len(tokens):
            raise TextGridError("the file ends early")
        value = tokens[pos]
        pos += 1
        if kind is float and not isinstance(value, float):
            raise TextGridError(f"expected a number, found {value!r}")
        if kind is str and not isinstance(value, str):
            raise TextGridError(f"expected a string, found {value!r}")
        return value

    if take(str) != "ooTextFile" or take(str) != "TextGrid":
        raise TextGridError("not a TextGrid (missing the ooTextFile / TextGrid header)")
    xmin, xmax = take(float), take(float)
    if take(str) != "<exists>":
        raise TextGridError("a TextGrid without tiers")
    tiers = []
    for _ in range(int(take(float))):
        kind, name = take(str), take(str)
        txmin, txmax, count = take(float), take(float), int(take(float))
        tier = Tier(name, kind, txmin, txmax)
        for _ in range(count):
            if kind == "IntervalTier":
                start, end, label = take(float), take(float), take(str)
            elif kind == "TextTier":
                start = take(float)
                end, label = start, take(str)
            else:
                raise TextGridError(f"unknown tier class {kind!r}")
            tier.items.append((start, end, label))
        tiers.append(tier)
    return TextGrid(xmin, xmax, tiers)


def read_textgrid(path: str | Path) -> TextGrid:
    raw = Path(path).read_bytes()
    for encoding in ("utf-8", "utf-16"):
        try:
            return parse_textgrid(raw.decode(encoding))
        except UnicodeDecodeError:
            continue
    raise TextGridError("the file is neither UTF-8 nor UTF-16 text")


def _quote(label: str) -> str:
    return '"' + label.replace('"', '""') + '"'


def format_textgrid(grid: TextGrid) -> str:
    """The long text format."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", f"xmin = {grid.xmin}", f"xmax = {grid.xmax}",
             "tiers? <exists>", f"size = {len(grid.tiers)}", "item []:"]  # fmt: skip
    for i, tier in enumerate(grid.tiers, 1):
        lines += [f"    item [{i}]:", f"        class = {_quote(tier.kind)}", f"        name = {_quote(tier.name)}",
                  f"        xmin = {tier.xmin}", f"        xmax = {tier.xmax}"]  # fmt: skip
        noun = "intervals" if tier.kind == "IntervalTier" else "points"
        lines.append(f"        {noun}: size = {len(tier.items)}")
        for j, (start, end, label) in enumerate(tier.items, 1):
            lines.append(f"        {noun} [{j}]:")
            if tier.kind == "IntervalTier":
                lines += [
                    f"            xmin = {start}",
                    f"            xmax = {end}",
                    f"            text = {_quote(label)}",
                ]
            else:
                lines += [f"            number = {start}", f"            mark = {_quote(label)}"]
    return "\n".join(lines) + "\n"


def intervals_with_gaps(items: list[tuple[str, float, float]], xmax: float) -> list[tuple[float, float, str]]:
    """Labelled spans ``(label, start, end)`` as a tier that tiles ``[0, xmax]`` (gaps get "")."""
    out: list[tuple[float, float, str]] = []
    cursor = 0.0
    for label, start, end in sorted(items, key=lambda x: x[1]):
        if start > cursor + 1e-9:
            out.append((cursor, start, ""))
        out.append((max(start, cursor), end, label))
        cursor = end
    if cursor < xmax - 1e-9:
        out.append((cursor, xmax, ""))
    return out
