"""Telling a DICOM file from the rest (`model.preprocess.dicom_start`), with or without its
128-byte preamble, and the library's loader reading one without it."""

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from model.preprocess import dicom_start, load_image_file


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (40, 40)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,start",
    [
        ("CT_small.dcm", 132),  # preamble and "DICM"
        ("OT-PAL-8-face.dcm", 0),  # implicit VR, no file meta
        ("ExplVR_LitEndNoMeta.dcm", 0),
        ("ExplVR_BigEndNoMeta.dcm", 0),
        ("rtstruct.dcm", 0),
        ("no_meta.dcm", None),  # a stray first byte: pydicom cannot read it either
        ("README.txt", None),
        ("zipMR.gz", None),
    ],
)
def test_dicom_start(name, start):
    with open(get_testdata_file(name), "rb") as f:
        assert dicom_start(f.read()) == start


@pytest.mark.parametrize(
    "data",
    [
        _image("PNG"),
        _image("JPEG"),
        b"not an image at all",
        b"\x08\x00\x05\x00" + b"\xff" * 64,  # group 0008, but an implicit length past the end
        b"\x02\x00\x10\x00",  # too short for an element
    ],
)
def test_what_is_not_dicom(data):
    assert dicom_start(data) is None


def test_the_loader_reads_a_dicom_without_its_preamble():
    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        data = f.read()
    whole, meta_first = load_image_file(data), load_image_file(data[132:])
    assert meta_first.source_format == "dicom"
    np.testing.assert_array_equal(meta_first.pixels, whole.pixels)
