"""DICOM as archives hold it, through the upload path (`api.ingest.decode_upload`): without the
128-byte preamble (the file meta at byte 0, or no file meta at all), in big endian, in RLE, in
JPEG Lossless and 12-bit JPEG; and the limits of the hostile-upload tests still hold on each.

test_dicom_corpus.py runs pydicom's own files; these make what the corpus lacks.
"""

import io
import struct
import tracemalloc

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import get_decoder
from pydicom.uid import RLELossless

from api.ingest import decode_upload
from api.rejection import UploadRejected

from .test_hostile_uploads import _dataset, _deflate_bomb, _file, _gradient

LIMITS = (8_000_000, 25_000_000, 16 * 2**20)  # bytes, pixels, inflated bytes


def _stored(data: bytes) -> np.ndarray:
    png, notes, fmt = decode_upload(data, *LIMITS)
    assert fmt == "dicom" and notes[0].startswith("DICOM de-identified")
    return np.asarray(Image.open(io.BytesIO(png)))


def _refusal(data: bytes) -> tuple[int, str]:
    with pytest.raises(UploadRejected) as caught:
        decode_upload(data, *LIMITS)
    return caught.value.status, caught.value.message


def _bare(ds, implicit: bool = False, little: bool = True) -> bytes:
    """The data set alone: no preamble, no "DICM", no file meta (ACR-NEMA style)."""
    if not little:  # pydicom writes OW as given: the pixels must already be big endian
        ds.PixelData = _gradient().astype(">u2").tobytes()
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _saved(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: _file(_dataset())[132:],  # the file meta at byte 0
        lambda: _bare(_dataset(), implicit=True),
        lambda: _bare(_dataset()),
        lambda: _bare(_dataset(), little=False),
    ],
    ids=["meta at byte 0", "implicit VR", "explicit VR", "explicit VR big endian"],
)
def test_a_dicom_without_its_preamble_decodes_as_with_it(make):
    data = make()
    assert data[128:132] != b"DICM"
    np.testing.assert_array_equal(_stored(data), _stored(_file(_dataset())))


@pytest.mark.parametrize(
    "make,code,reason",
    [
        (lambda: _bare(_dataset(rows=6000, columns=5000, pixels=b"\0\0")), 413, "30,000,000 pixels"),
        (lambda: _bare(_dataset(NumberOfFrames=2, pixels=b"\0\0")), 422, "2 frames"),
        (lambda: _bare(_dataset(PhotometricInterpretation="RGB", SamplesPerPixel=3, pixels=b"\0\0")), 422, "colour"),
        (lambda: _bare(_dataset())[:-100], 422, "cut short"),
        (lambda: _deflate_bomb(64 * 2**20)[132:], 413, "inflates to more than 16.0 MiB"),
        (lambda: b"\x08\x00\x05\x00" + b"\xff" * 64, 415, "send PNG, JPEG or DICOM"),  # implausible length
    ],
)
def test_without_the_preamble_the_limits_hold(make, code, reason):
    status, message = _refusal(make())
    assert status == code and reason in message, message


def _rle_file(frame: bytes | None = None, **attrs) -> bytes:
    ds = _dataset(**attrs)
    ds.file_meta = _file_meta(RLELossless)
    if frame is None:
        ds.compress(RLELossless, _gradient(), encoding_plugin="pydicom")
    else:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    return _saved(ds)


def _file_meta(syntax):
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    return meta


def test_rle_is_decoded_by_pylibjpeg_rle_and_never_by_pydicoms_own(monkeypatch):
    def unbounded(*args, **kwargs):
        raise AssertionError("pydicom's RLE decoder grows its output without a bound")

    monkeypatch.setattr(pydicom.pixels.decoders.rle, "_rle_decode_frame", unbounded)
    np.testing.assert_array_equal(_stored(_rle_file()), _stored(_file(_dataset())))


def test_rle_is_refused_when_pylibjpeg_rle_is_missing(monkeypatch):
    monkeypatch.delitem(get_decoder(RLELossless)._available, "pylibjpeg")
    status, message = _refusal(_rle_file())
    assert status == 415 and "transfer syntax" in message, message


def _rle_header(*segments: bytes) -> bytes:
    offsets, at = [], 64
    for segment in segments:
        offsets.append(at)
        at += len(segment)
    return struct.pack("<16I", len(segments), *offsets, *[0] * (15 - len(segments))) + b"".join(segments)


@pytest.mark.parametrize(
    "frame,reason",
    [
        (_rle_header(b"\x00\x01"), "1 segment(s), the header says 16 bits"),  # 8-bit data in a 16-bit header
        (_rle_header(*[b"\x00\x01"] * 6), "6 segment(s)"),  # 16-bit colour in a grey header
        (b"\x02\x00\x00\x00" + b"\x00" * 60 + b"\x00\x01", "no readable segment header"),  # first offset not 64
        (b"\x00\x01", "no readable segment header"),
    ],
)
def test_rle_segments_must_agree_with_the_header_before_decoding(frame, reason):
    status, message = _refusal(_rle_file(frame))
    assert status == 422 and reason in message, message


@pytest.mark.parametrize("bits", [8, 16])
def test_an_rle_bomb_decodes_no_further_than_the_headers_size(bits):
    # 64 x 64 segments of 1 MiB each, every 2 bytes a run of 128: 64 MiB each if decoded to the end
    # (pydicom's own decoder gets there). pylibjpeg-rle stops at the header's size: it drops the
    # excess of an 8-bit segment, and panics on a 16-bit one (a 422).
    segment = b"\x81\x00" * 2**19
    data = _rle_file(_rle_header(*[segment] * (bits // 8)), BitsAllocated=bits, BitsStored=bits, HighBit=bits - 1)
    tracemalloc.start()
    try:
        try:
            outcome = _stored(data).shape
        except UploadRejected as exc:
            outcome = exc.status
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome in ((64, 64), 422), outcome
    assert peak < len(data) * 4 + 8 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # the upload's copies, not 64 MiB


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPGExtended.dcm"])
def test_jpeg_lossless_and_12_bit_decode_and_their_size_is_checked_first(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    stored = _stored(_saved(ds))
    assert stored.shape == (ds.Rows, ds.Columns) and stored.min() == 0 and stored.max() == 65535
    ds.Rows //= 2  # the codestream still says the full size: the decoder would believe it
    status, message = _refusal(_saved(ds))
    assert status == 422 and "they must agree" in message, message
