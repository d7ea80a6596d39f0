"""Parsing the site: record pages (lxml), image bytes, id specs. No network, no files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from lxml import html as lxml_html

from microqa.data.dataset import FIELD_COLUMNS
from microqa.data.images import ImageInfo, inspect_bytes

# Labels as the site writes them, normalised by _label_key (lower case, single spaces, no colon).
LABEL_ALIASES = {
    "micrograph no": "micrograph_no",
    "micrograph no.": "micrograph_no",
    "micrograph number": "micrograph_no",
    "keyword": "keywords",
    "category": "categories",
    "standard code": "standard_codes",
    "organization": "organisation",
    "further info": "further_information",
}


def normalise_text(text: str) -> str:
    """`&nbsp;` -> space, every run of whitespace -> one space, trimmed."""
    return " ".join(text.replace("\xa0", " ").split())


def _label_key(text: str) -> str:
    return normalise_text(text).rstrip(":").strip().lower()


def _column_for(label: str) -> str | None:
    key = _label_key(label)
    if key in LABEL_ALIASES:
        return LABEL_ALIASES[key]
    column = key.replace(" ", "_")
    return column if column in FIELD_COLUMNS or column == "micrograph_no" else None


def _own_text(element) -> str:
    """Text of an element without the text of dt/dd elements nested in it (malformed HTML)."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str) and child.tag.lower() in ("dt", "dd"):
            parts.append(child.tail or "")
            continue
        parts.append(_own_text(child) if isinstance(child.tag, str) else "")
        parts.append(child.tail or "")
    return "".join(parts)


@dataclass
class ParsedRecord:
    fields: dict[str, str]  # every FIELD_COLUMNS key, "" when the page does not show it
    shown_number: str  # the page's own "Micrograph No", "" when absent
    unknown_labels: list[str]
    image_src: str = ""  # the micrograph's <img src> as written on the page, "" when none


def decode_text(body: bytes, content_type: str | None) -> str:
    """Bytes -> text: the charset the server declared, else UTF-8 (the site's encoding)."""
    match = re.search(r"charset=([\w.:-]+)", content_type or "", re.I)
    if match:
        try:
            return body.decode(match.group(1), errors="replace")
        except LookupError:
            pass  # an unknown charset name: fall through to UTF-8
    return body.decode("utf-8", errors="replace")


def parse_record(page: bytes | str, content_type: str | None = None) -> ParsedRecord | None:
    """Parse a record page; None when it holds no record (a missing id).

    The record is the first `div.col-md-8` holding `<dt>` labels, each followed by `<dd>`
    values. Label case, spacing, `&nbsp;` and a trailing colon do not matter; fields the page
    does not show are empty; a container without any field value is an empty record (None).
    """
    text = page if isinstance(page, str) else decode_text(page, content_type)
    if not text.strip():
        return None
    document = lxml_html.document_fromstring(text)
    containers = document.xpath(
        '//div[contains(concat(" ", normalize-space(@class), " "), " col-md-8 ")][.//dt]'
    )
    if not containers:
        return None
    values: dict[str, list[str]] = {}
    unknown: list[str] = []
    column: str | None = None
    for element in containers[0].iter("dt", "dd"):
        if element.tag == "dt":
            label = _own_text(element)
            column = _column_for(label)
            if column is None and normalise_text(label):
                unknown.append(normalise_text(label))
        elif column is not None:
            values.setdefault(column, []).append(normalise_text(_own_text(element)))
    fields = {c: normalise_text(" ".join(values.get(c, []))) for c in FIELD_COLUMNS}
    if not any(fields.values()):
        return None
    shown = normalise_text(" ".join(values.get("micrograph_no", [])))
    sources = [src.strip() for src in containers[0].xpath(".//img/@src") if "micrographs/" in src]
    return ParsedRecord(fields, shown, unknown, sources[0] if sources else "")


def inspect_image(data: bytes, name: str = "image") -> ImageInfo:
    """Decode the whole image (so truncation shows) within the pixel limit; ImageError when
    it does not decode. The site serves GIF and BMP files under `.jpg` names: the true format
    names the saved file."""
    return inspect_bytes(data, name=name)


@dataclass(frozen=True)
class IdRanges:
    """Sorted, merged id ranges, iterated lazily (`1-100000000` costs two numbers, not a list)."""

    ranges: tuple[tuple[int, int], ...]

    def __iter__(self) -> Iterator[int]:
        for low, high in self.ranges:
            yield from range(low, high + 1)

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdRanges):
            return self.ranges == other.ranges
        return isinstance(other, list | tuple) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in self.ranges)


def parse_ids(spec: str) -> IdRanges:
    """'1-40', '7', '1-10,77,90-95' -> sorted unique ids; ValueError naming the bad part."""
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise ValueError(f"--ids {spec!r}: {part!r} is not an id or a range like 1-40")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) else low
        if low < 1 or high < low:
            raise ValueError(f"--ids {spec!r}: range {part!r} must satisfy 1 <= first <= last")
        ranges.append((low, high))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return IdRanges(tuple(merged))
