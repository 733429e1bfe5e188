"""A DICOM upload read with bounded work, checked from its header, then decoded to grey pixels.

The order is the defence: the file meta is read first and the transfer syntax checked against an
allow-list (a file without file meta, which archives also hold, is read as pydicom reads it with
`force`: its encoding from its first element, its pixel data native); a deflated dataset is
inflated in steps that stop past `max_inflated_bytes` (pydicom would inflate all of it into
memory: a 1 MB upload can hold a 1 GiB element of zeros); the dataset is parsed once and that
`Dataset` is passed on; pixel data, frames, colour, size and a compressed frame's own size (or an
RLE frame's segments) are checked from the header before pydicom decodes a pixel.

Messages name no header value except checked numbers: an exception's text may reach a log.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom.uid as uid

from model import dicom_grey
from model.preprocess import dicom_start

from .codestream import j2k_size, jpeg_size, rle_segments
from .rejection import UploadRejected

# Transfer syntaxes read, with how to check a compressed frame against the header. Explicit VR
# Big Endian is retired (PS3.5 2004) but older archives still hold it; native, like the first two.
_TRANSFER_SYNTAXES = {
    uid.ImplicitVRLittleEndian: None,
    uid.ExplicitVRLittleEndian: None,
    uid.ExplicitVRBigEndian: None,
    uid.DeflatedExplicitVRLittleEndian: None,
    uid.JPEGBaseline8Bit: jpeg_size,
    uid.JPEGExtended12Bit: jpeg_size,
    uid.JPEGLossless: jpeg_size,
    uid.JPEGLosslessSV1: jpeg_size,
    uid.JPEGLSLossless: jpeg_size,
    uid.JPEGLSNearLossless: jpeg_size,
    uid.JPEG2000Lossless: j2k_size,
    uid.JPEG2000: j2k_size,
    uid.HTJ2KLossless: j2k_size,
    uid.HTJ2KLosslessRPCL: j2k_size,
    uid.HTJ2K: j2k_size,
    uid.RLELossless: rle_segments,
}
# The one plugin allowed to decode a syntax. pydicom's own RLE decoder (its first choice) grows
# its output with no bound until it is done (each 2-byte run can yield 128 bytes: a 32 MiB upload
# could reach 2 GiB); pylibjpeg-rle writes into a buffer of the size the header gives, checked.
_PLUGIN = {uid.RLELossless: "pylibjpeg"}
_ACCEPTED = "uncompressed, deflated, JPEG, JPEG-LS, JPEG 2000, HTJ2K or RLE"
_INFLATE_STEP = 1 << 20  # bytes handed to zlib, and taken from it, at a time
_GREY = ("MONOCHROME1", "MONOCHROME2")


def read_dicom(data: bytes, max_inflated_bytes: int):
    """The upload's bytes -> its `FileDataset`, parsed once, pixel data still encoded."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filereader import read_dataset

    start = dicom_start(data)
    if start is None:
        raise UploadRejected(415, "not a DICOM file: send PNG, JPEG or DICOM")
    fp = io.BytesIO(data)
    fp.seek(start)
    if start == 0 and data[:2] != b"\x02\x00":
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = syntax = _guessed_syntax(data)
    else:
        try:
            meta = FileMetaDataset(
                read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_past_file_meta)
            )
            syntax = uid.UID(str(meta.get("TransferSyntaxUID", "")).strip("\0 "))
        except Exception:
            raise UploadRejected(422, "corrupt DICOM file: its file meta information cannot be read") from None
    if not syntax:
        raise UploadRejected(422, "the DICOM file meta information names no transfer syntax")
    if syntax not in _TRANSFER_SYNTAXES:
        raise UploadRejected(415, f"unsupported DICOM transfer syntax: send {_ACCEPTED}")
    if not _decodable(syntax):
        raise UploadRejected(415, f"no decoder for the DICOM transfer syntax {syntax.name} here: {_missing(syntax)}")
    body = fp
    if syntax == uid.DeflatedExplicitVRLittleEndian:
        body = io.BytesIO(_inflate(memoryview(data)[fp.tell() :], max_inflated_bytes))
    implicit, little = syntax == uid.ImplicitVRLittleEndian, syntax != uid.ExplicitVRBigEndian
    begin = body.tell()
    try:
        dataset = read_dataset(body, is_implicit_VR=implicit, is_little_endian=little)
    except Exception:
        raise UploadRejected(422, "corrupt DICOM file: its data set cannot be read") from None
    if _cut_short(dataset, len(body.getbuffer()) - begin):
        raise UploadRejected(422, "corrupt DICOM file: it ends inside its data set (cut short)")
    preamble = data[:128] if start else None
    ds = FileDataset(body, dataset, preamble=preamble, file_meta=meta, is_implicit_VR=implicit, is_little_endian=little)
    ds.set_original_encoding(implicit, little)
    return ds


def check_header(ds, max_pixels: int, min_side: int, max_side: int) -> None:
    """Refuse what the header shows cannot be one grey radiograph within the caps, before decoding."""
    if "PixelData" not in ds:
        raise UploadRejected(422, "the DICOM holds no (integer) pixel data")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        grey = str(ds.get("PhotometricInterpretation", "")).strip() in _GREY
    except Exception:
        raise UploadRejected(422, "the DICOM header lacks readable Rows, Columns or pixel description") from None
    if frames > 1:
        raise UploadRejected(422, f"the DICOM holds {frames} frames: send one radiograph, a single frame")
    if samples != 1 or not grey:
        raise UploadRejected(
            422, "the DICOM is a colour image: chest radiographs are grey, send MONOCHROME1 or MONOCHROME2"
        )
    if rows * columns > max_pixels:
        raise UploadRejected(413, f"the image has {rows * columns:,} pixels, more than the {max_pixels:,} allowed")
    if min(rows, columns) < min_side or max(rows, columns) > max_side:
        raise UploadRejected(
            422, f"image of {columns}x{rows} pixels: each side must be between {min_side} and {max_side}"
        )
    declared = _TRANSFER_SYNTAXES[ds.file_meta.TransferSyntaxUID]
    if declared is not None:
        _check_codestream(ds, declared, rows, columns)


def grey_pixels(ds) -> tuple[np.ndarray, list[str]]:
    """A checked dataset's pixels -> (float in [0, 1], white = attenuating, notes)."""
    notes: list[str] = []
    try:
        ds.pixel_array_options(decoding_plugin=_PLUGIN.get(ds.file_meta.TransferSyntaxUID, ""))
        arr = ds.pixel_array
    except Exception as exc:
        raise UploadRejected(422, f"DICOM pixel data cannot be decoded ({type(exc).__name__})") from None
    except BaseException as exc:
        # pylibjpeg-rle (2.2) panics instead of raising when a 16-bit segment decodes past its
        # share of the buffer (its bound check forgets the byte stride); the buffer itself never
        # grows. pyo3 turns the panic into a PanicException, a BaseException like KeyboardInterrupt.
        if type(exc).__name__ != "PanicException":
            raise
        raise UploadRejected(422, "DICOM pixel data cannot be decoded (its decoder panicked)") from None
    return dicom_grey.grey(arr, ds, notes), notes


def _missing(syntax) -> str:
    """What the operator installs to decode `syntax` (for the refusal's message)."""
    if syntax == uid.RLELossless:
        return "its decoder, pylibjpeg-rle, is a dependency of whatif-cxr: reinstall it"
    if syntax in (
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEGExtended12Bit,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
    ):
        return "the operator can install whatif-cxr[gpl-codecs] (pylibjpeg-libjpeg, GPL-3.0)"
    return "send it uncompressed or as JPEG 2000"


def _decodable(syntax) -> bool:
    # JPEG Lossless, for one, needs a plugin (pylibjpeg-libjpeg) this installation may lack.
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    plugin = _PLUGIN.get(syntax)
    return plugin in decoder.available_plugins if plugin else decoder.is_available


def _guessed_syntax(data: bytes) -> uid.UID:
    """A data set without file meta: its encoding read from its first element, as pydicom's
    `dcmread(force=True)` reads it (`dicom_start` has checked the element). Its pixel data can
    only be native: an encapsulated syntax must be named in the file meta."""
    from pydicom.filereader import ENCODED_VR

    if data[:2] == b"\x00\x08":
        return uid.ExplicitVRBigEndian
    return uid.ImplicitVRLittleEndian if data[4:6] not in ENCODED_VR else uid.ExplicitVRLittleEndian


def _cut_short(dataset, size: int) -> bool:
    """pydicom ends a data set quietly where the file ends: inside an element of undefined length
    (encapsulated pixel data) it keeps nothing, inside another it keeps the value cut."""
    if not len(dataset):
        return size > 0
    last = dataset.get_item(max(dataset.keys()))  # still raw, unless pydicom parsed it (a sequence)
    length = getattr(last, "length", 0xFFFFFFFF)
    return length != 0xFFFFFFFF and isinstance(last.value, bytes) and len(last.value) < length


def _past_file_meta(tag, vr, length) -> bool:
    return tag >> 16 != 2


def _inflate(compressed: memoryview, cap: int) -> bytes:
    """Raw deflate (PS3.5 A.5) -> bytes, refused as soon as the output would pass `cap`."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts, size = [], 0
    try:
        for start in range(0, len(compressed), _INFLATE_STEP):
            pending = compressed[start : start + _INFLATE_STEP]
            while pending and not inflater.eof:
                # max_length bounds each step's output (zlib keeps the rest of the input for the
                # next step), so memory grows by at most a step past what was kept.
                part = inflater.decompress(pending, min(_INFLATE_STEP, cap + 1 - size))
                size += len(part)
                if size > cap:
                    raise UploadRejected(
                        413, f"the deflated DICOM inflates to more than {cap / 2**20:.1f} MiB, the limit"
                    )
                parts.append(part)
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        raise UploadRejected(422, "corrupt DICOM file: its deflated data set cannot be inflated") from None
    if not inflater.eof:
        raise UploadRejected(422, "corrupt DICOM file: its deflated data set is cut short")
    return b"".join(parts)


def _check_codestream(ds, declared, rows: int, columns: int) -> None:
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:
        raise UploadRejected(422, "corrupt DICOM file: its compressed pixel data cannot be read") from None
    if declared is rle_segments:
        _check_rle(frame, ds)
        return
    size = declared(frame)
    if size is None:
        raise UploadRejected(422, "corrupt DICOM file: its compressed frame has no readable image header")
    if size != (rows, columns, 1):
        raise UploadRejected(
            422,
            f"the compressed frame is {size[1]}x{size[0]} with {size[2]} component(s), the header says "
            f"{columns}x{rows} grey: they must agree",
        )


def _check_rle(frame: bytes, ds) -> None:
    segments = rle_segments(frame)
    if segments is None:
        raise UploadRejected(422, "corrupt DICOM file: its RLE frame has no readable segment header")
    try:
        bits = int(ds.BitsAllocated)
    except Exception:
        raise UploadRejected(422, "the DICOM header lacks a readable BitsAllocated") from None
    # One segment per byte of a grey sample: the decoder's buffer is Rows x Columns x segments.
    if bits not in (8, 16, 32) or segments != bits // 8:
        raise UploadRejected(
            422,
            f"the RLE frame has {segments} segment(s), the header says {bits} bits allocated for one grey sample: "
            "they must agree (one segment per byte; 8, 16 or 32 bits)",
        )
