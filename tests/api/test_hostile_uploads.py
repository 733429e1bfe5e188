"""Hostile and degenerate uploads: bounded work before decoding, decoding off the event loop.

The app here has no worker (a stub records the enqueued job ids): what is tested ends when
the upload is accepted or refused.
"""

import asyncio
import io
import logging
import struct
import threading
import time
import tracemalloc
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from .conftest import KEY_A, UNLIMITED

H = {"X-API-Key": KEY_A}
INFLATE_CAP = 16 * 2**20
MARKER = "WHATIFSECRETFN"  # a header value that must reach neither a log nor a response


class _Broker:
    """Stands in for Celery: the upload's journey ends at the queue."""

    def __init__(self):
        self.sent = []

    def send_task(self, name, args, task_id):
        self.sent.append(task_id)


def _app(tmp_path, **overrides):
    from api.core.config import Settings
    from api.main import create_app

    settings = Settings(
        api_keys=[KEY_A],
        blob_dir=str(tmp_path),
        max_upload_bytes=8_000_000,
        max_pixels=25_000_000,
        max_inflated_bytes=INFLATE_CAP,
        **{**UNLIMITED, **overrides},
    )
    return create_app(settings, celery=_Broker())


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(_app(tmp_path_factory.mktemp("blobs")), raise_server_exceptions=False) as c:
        yield c


def _post(client, data, name="x.dcm", ctype="application/dicom"):
    return client.post(
        "/counterfactual", headers=H, files={"image": (name, data, ctype)}, data={"target": "mild edema"}
    )


def _stored_input(client, response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.app.state.store.get(response.json()["id"], "input.png"))))


def _gradient() -> np.ndarray:
    return np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095: every 12-bit value once


def _is_full_range(stored: np.ndarray) -> bool:
    """The gradient stretched linearly over 16 bits (within float32 rounding): no window applied."""
    return np.abs(stored.astype(int) - np.round(_gradient() / 4095 * 65535)).max() <= 1


def _dataset(pixels=None, rows=64, columns=64, **attrs) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Hostile^Upload"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = _gradient().tobytes() if pixels is None else pixels
    return ds


def _file(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _encoded(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _deflate_bomb(zeros: int) -> bytes:
    """A 64 x 64 DICOM, deflated, with a private element of `zeros` zero bytes: the element is
    fed to zlib a MiB at a time, so the test never holds it."""
    ds = _dataset()
    head, tail = Dataset(), Dataset()
    for el in ds:  # the private group 0009 sits between group 0008 and the rest, in tag order
        (head if el.tag.group < 0x0009 else tail).add(el)
    head.add_new(0x00090010, "LO", "WHATIF BOMB")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [
        deflater.compress(_encoded(head)),
        deflater.compress(struct.pack("<HH2s2xI", 0x0009, 0x1000, b"OB", zeros)),
    ]
    mib = bytes(2**20)
    parts += [deflater.compress(mib) for _ in range(zeros // 2**20)]
    parts += [deflater.compress(_encoded(tail)), deflater.flush()]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + fp.getvalue() + b"".join(parts)


@pytest.fixture(scope="module")
def bomb():
    return _deflate_bomb(200 * 2**20)


def test_a_deflate_bomb_is_refused_while_it_inflates(client, bomb):
    assert len(bomb) < 400_000  # 200 MiB of zeros deflate to about 200 kB
    assert _post(client, _file(_dataset())).status_code == 202  # imports done before measuring
    tracemalloc.start()
    try:
        start = time.perf_counter()
        r = _post(client, bomb)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 413 and "inflates to more than 16.0 MiB" in r.json()["detail"], r.text
    assert peak < INFLATE_CAP + 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # the cap, not 200 MiB
    assert elapsed < 5.0


def test_a_small_deflated_dicom_is_read_once_and_accepted(client, monkeypatch):
    import pydicom.filereader

    data = _deflate_bomb(2**20)  # 1 MiB of zeros: well under the cap
    calls = []
    read_dataset = pydicom.filereader.read_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs.get("stop_when"))
        return read_dataset(*args, **kwargs)

    monkeypatch.setattr(pydicom.filereader, "read_dataset", counting)
    r = _post(client, data)
    assert r.status_code == 202, r.text
    assert len(calls) == 2, calls  # the file meta, then the data set: never the whole file again
    assert _is_full_range(_stored_input(client, r))


def _with_syntax(data: bytes, syntax: str) -> bytes:
    # Explicit VR Little Endian's UID and these have the same padded length: swap it in the meta.
    old = ExplicitVRLittleEndian.encode() + b"\0"
    return data.replace(old, syntax.encode().ljust(len(old), b"\0"), 1)


@pytest.mark.parametrize(
    "make,code,reason",
    [
        (lambda: _with_syntax(_file(_dataset()), "1.2.840.10008.1.2.4"), 415, "transfer syntax"),  # none known
        (lambda: _with_syntax(_file(_dataset()), "1.2.840.10008.1.2.5"), 422, "compressed pixel data"),  # RLE named
        (lambda: _file(_dataset(NumberOfFrames=120, pixels=b"\0\0")), 422, "120 frames"),
        (lambda: _file(_dataset(SamplesPerPixel=3, PhotometricInterpretation="RGB", pixels=b"\0\0")), 422, "colour"),
        (lambda: _file(_dataset(PhotometricInterpretation="PALETTE COLOR", pixels=b"\0\0")), 422, "colour"),
        (lambda: _file(_dataset(rows=6000, columns=5000, pixels=b"\0\0")), 413, "30,000,000 pixels"),
        (lambda: _file(_dataset(rows=16, columns=64, pixels=b"\0\0")), 422, "each side"),
        (lambda: _file(_dataset(pixels=b"\0\0")), 422, "cannot be decoded"),
        (lambda: _file(_dataset())[:400], 422, "cut short"),
        (lambda: _deflate_bomb(0)[:-40], 422, "deflated"),
        (lambda: b"\0" * 128 + b"DICM" + b"\xff" * 64, 422, "file meta"),
    ],
)
def test_what_the_header_refuses_is_refused_before_decoding(client, make, code, reason):
    # The pixel data of most is two bytes: had a decoder run, the reason would be its failure.
    r = _post(client, make())
    assert r.status_code == code and reason in r.json()["detail"], r.text


def test_a_compressed_frame_larger_than_its_header_is_refused(client):
    ds = _dataset(rows=128, columns=128, pixels=np.zeros((128, 128), np.uint16).tobytes())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(JPEG2000Lossless, np.zeros((128, 128), np.uint16))
    ds.Rows = ds.Columns = 64  # the codestream still says 128 x 128: the decoder would believe it
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = _post(client, buf.getvalue())
    assert r.status_code == 422 and "128x128" in r.json()["detail"], r.text


@pytest.mark.parametrize("function", ["LINEAR", "SIGMOID", MARKER])
def test_a_degenerate_window_falls_back_to_the_full_range(client, caplog, function):
    caplog.set_level(logging.DEBUG)
    r = _post(client, _file(_dataset(WindowCenter=2048, WindowWidth=0, VOILUTFunction=function)))
    assert r.status_code == 202, r.text
    assert _is_full_range(_stored_input(client, r))
    assert MARKER not in caplog.text and MARKER not in r.text


def test_a_usable_window_is_still_applied(client):
    r = _post(client, _file(_dataset(WindowCenter=2048, WindowWidth=1024)))
    assert r.status_code == 202, r.text
    stored = _stored_input(client, r)
    assert (stored == 0).mean() > 0.3 and (stored == 65535).mean() > 0.3  # outside the window: clipped


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_png_and_jpeg_sizes_are_read_from_the_header(client):
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 7000, 5000, 1) + b"\x01\x11\x00"
    jpeg = b"\xff\xd8" + sof + b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00" + b"\xff\xd9"
    for data, name in [
        (_png_header_only(6000, 5000), "x.png"),
        (jpeg, "x.jpg"),
        (_png_header_only(10**5, 10**5), "x.png"),
    ]:
        r = _post(client, data, name=name, ctype="image/png" if name.endswith(".png") else "image/jpeg")
        assert r.status_code == 413 and "pixels" in r.json()["detail"], r.text


def _big_png(width=4000, height=2000) -> bytes:
    rng = np.random.default_rng(0)
    arr = (np.add.outer(np.arange(height) // 12, np.arange(width) // 16) % 256).astype(np.uint8)
    arr ^= rng.integers(0, 8, (height, width), dtype=np.uint8)  # so that the PNG does not shrink to nothing
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _hook_decode(monkeypatch, before=lambda: None):
    """Wrap the route's decode: returns a list of [start, end] perf_counter times, one per decode."""
    import api.routes.counterfactual as route

    decode, spans = route.decode_upload, []

    def timed(*args, **kwargs):
        span = [time.perf_counter(), None]
        spans.append(span)
        before()
        try:
            return decode(*args, **kwargs)
        finally:
            span[1] = time.perf_counter()

    monkeypatch.setattr(route, "decode_upload", timed)
    return spans


def _upload(http, data):
    return http.post(
        "/counterfactual", headers=H, files={"image": ("big.png", data, "image/png")}, data={"target": "mild edema"}
    )


async def _until(condition, timeout=10.0):
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_healthz_answers_while_a_large_png_decodes(tmp_path, monkeypatch):
    app, data = _app(tmp_path), _big_png()
    spans = _hook_decode(monkeypatch)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            upload = asyncio.create_task(_upload(http, data))
            await _until(lambda: spans or upload.done())
            sent = time.perf_counter()
            health = await http.get("/healthz")
            answered = time.perf_counter()
            return health, sent, answered, await upload

    health, sent, answered, upload = asyncio.run(scenario())
    assert upload.status_code == 202 and health.status_code == 200, upload.text
    ((start, end),) = spans
    # On the event loop the decode would hold /healthz until it ended.
    assert answered < end, f"/healthz answered {answered - end:.2f} s after the decode ended"
    assert answered - sent < 1.0


def test_the_pool_bounds_concurrent_decodes_and_refuses_past_its_queue(tmp_path, monkeypatch):
    app = _app(tmp_path, decode_threads=2, decode_queue=0)
    both_running, release = threading.Barrier(2, timeout=5), threading.Event()

    def wait_for_both_then_release():
        both_running.wait()  # two decodes at once, or a BrokenBarrierError
        release.wait(5)

    spans = _hook_decode(monkeypatch, wait_for_both_then_release)
    small = io.BytesIO()
    Image.fromarray((_gradient() >> 4).astype(np.uint8)).save(small, format="PNG")

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            first = [asyncio.create_task(_upload(http, small.getvalue())) for _ in range(2)]
            await _until(lambda: len(spans) == 2 or any(t.done() for t in first))
            refused = await _upload(http, small.getvalue())
            health = await http.get("/healthz")
            release.set()
            return refused, health, [await t for t in first]

    refused, health, accepted = asyncio.run(scenario())
    assert [r.status_code for r in accepted] == [202, 202], [r.text for r in accepted]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2", refused.text
    assert health.status_code == 200 and app.state.decode_pool.in_flight == 0
