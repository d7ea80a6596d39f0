"""Scraper units without a server: record-page parsing (tests/data/*.html), ids, images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from microqa.data import doitpoms, images
from tests.conftest import REPO

PAGES = REPO / "tests" / "data"


def page(name: str) -> bytes:
    return (PAGES / name).read_bytes()


def test_site_layout_parses_every_field():
    record = doitpoms.parse_record(page("record_basic.html"), "text/html; charset=utf-8")
    assert record is not None
    assert set(record.fields) == set(doitpoms.FIELD_COLUMNS)
    assert all(record.fields.values()), "every field of this page has a value"
    f = record.fields
    assert record.shown_number == "7"
    assert f["brief_description"] == "Fe 99.2, C 0.8 (wt%), eutectoid steel – pearlite"
    # &nbsp; around commas becomes a plain space; the text is otherwise kept as shown.
    assert f["keywords"] == "alloy , carbon , cementite, ferrite , iron , pearlite"
    assert f["categories"] == "Metal or alloy, Fracture"
    assert f["reaction"] == "γ → α + Fe3C"
    assert f["processing"] == "Austenitised at 900 °C, air cooled"
    assert f["applications"] == "Rails & wire"
    # The site shows some markup as literal text; it stays literal.
    assert f["sample_preparation"] == "Etched in K<sub>3</sub>Fe(CN)<sub>6</sub>"
    assert f["length_bar"] == "10 μm"
    assert f["further_information"] == (
        "The lamellae of cementite (dark) are embedded in ferrite. A second paragraph, 5 µm apart."
    )
    assert f["organisation"].endswith("University of Cambridge")
    assert record.image_src == "micrographs/large/000007.gif"  # not the licence badge


def test_label_case_spacing_colons_and_missing_fields():
    record = doitpoms.parse_record(page("record_odd_labels.html"))
    assert record is not None
    f = record.fields
    assert f["brief_description"] == "Polyethylene spherulites"
    assert f["keywords"] == "polymer, spherulite"
    assert f["categories"] == "Polymer"
    assert f["length_bar"] == "200 μm"
    assert f["organisation"] == "University of Cambridge"  # "Organization" spelling
    for absent in (
        "system",
        "composition",
        "standard_codes",
        "reaction",
        "processing",
        "applications",
        "sample_preparation",
        "further_information",
        "contributor",
    ):
        assert f[absent] == "", absent
    assert record.unknown_labels == ["Magnification"]
    assert record.shown_number == ""
    assert record.image_src == ""  # the scraper then uses micrographs/large/NNNNNN.jpg


@pytest.mark.parametrize("name", ["record_empty.html", "record_empty_container.html"])
def test_page_without_a_record_is_a_missing_id(name):
    assert doitpoms.parse_record(page(name)) is None


def test_blank_body_is_a_missing_id():
    assert doitpoms.parse_record(b"") is None
    assert doitpoms.parse_record("  \n") is None


def test_malformed_html_still_parses():
    record = doitpoms.parse_record(page("record_malformed.html"))
    assert record is not None
    f = record.fields
    assert f["brief_description"] == "Ti-6Al-4V, basket weave structure"
    assert f["keywords"] == "alloy, titanium, α+β"
    assert f["technique"] == "Reflected light microscopy"
    assert f["length_bar"] == "50 µm"
    assert f["contributor"] == "Prof X Y Z"
    assert f["system"] == ""


@pytest.mark.parametrize("content_type", [None, "", "application/octet-stream", "text/html"])
def test_utf8_is_assumed_when_the_server_declares_no_charset(content_type):
    record = doitpoms.parse_record(page("record_basic.html"), content_type)
    assert record.fields["length_bar"] == "10 μm"


def test_declared_charset_wins():
    latin = "<div class='col-md-8'><dl><dt>Length bar</dt><dd>5 \xb5m</dd></dl></div>"
    record = doitpoms.parse_record(latin.encode("latin-1"), "text/html; charset=ISO-8859-1")
    assert record.fields["length_bar"] == "5 µm"


@pytest.mark.parametrize(
    "spec,ids",
    [("1-5", [1, 2, 3, 4, 5]), ("7", [7]), (" 3 - 4 ,1,4", [1, 3, 4]), ("9-9", [9])],
)
def test_parse_ids(spec, ids):
    assert list(doitpoms.parse_ids(spec)) == ids


def test_parse_ids_is_lazy():
    huge = doitpoms.parse_ids("1-100000000,5-7,100000001")
    assert len(huge) == 100_000_001 and str(huge) == "1-100000001"
    assert next(iter(huge)) == 1


@pytest.mark.parametrize("spec", ["", "a-b", "5-1", "0-3", "1-", "-4", "1..4", "3,,4"])
def test_parse_ids_rejects_malformed_specs_naming_them(spec):
    with pytest.raises(ValueError, match="--ids"):
        doitpoms.parse_ids(spec)


def encoded(fmt: str, mode: str = "RGB", size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt,mode,ext",
    [
        ("JPEG", "RGB", "jpg"),
        ("JPEG", "L", "jpg"),
        ("GIF", "P", "gif"),
        ("BMP", "RGB", "bmp"),
        ("PNG", "RGB", "png"),
    ],
)
def test_inspect_image_reports_the_true_format(fmt, mode, ext):
    data = encoded(fmt, mode)
    info = doitpoms.inspect_image(data)
    assert (info.format, info.extension, info.mode) == (fmt, ext, mode)
    assert (info.width, info.height) == (64, 48)
    assert len(info.sha256) == 64


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "PNG"])
def test_truncated_images_are_rejected(fmt):
    data = encoded(fmt, "P" if fmt == "GIF" else "RGB")
    with pytest.raises(images.ImageError, match="cannot decode"):
        doitpoms.inspect_image(data[: len(data) // 2])


def test_html_instead_of_an_image_is_rejected():
    with pytest.raises(images.ImageError, match="not a recognised image format"):
        doitpoms.inspect_image(b"<html><body>Server busy</body></html>")


def test_unsupported_format_is_named():
    with pytest.raises(images.ImageError, match="WEBP"):
        doitpoms.inspect_image(encoded("WEBP"))


def test_an_image_over_the_pixel_limit_is_named(monkeypatch):
    monkeypatch.setenv("MICROQA_MAX_PIXELS", "1000")
    with pytest.raises(images.ImageError, match="page 7 image: 64x48 px is over the limit"):
        doitpoms.inspect_image(encoded("PNG"), name="page 7 image")
