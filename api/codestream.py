"""The image size a compressed DICOM frame declares in its own codestream header.

A DICOM's Rows and Columns are only a claim: the JPEG or JPEG 2000 decoder allocates what the
codestream says, and pydicom compares the two only after decoding (a 64 x 64 header over a
40000 x 40000 codestream would decode in full first). Reading the codestream's header lets the
upload's pixel cap hold before any decoder runs. An RLE frame declares no size, only its number
of segments (one per byte of each sample, PS3.5 G.2): pylibjpeg-rle decodes into a buffer of
Rows x Columns x segments bytes, so the count is what must agree with the header.
"""

from __future__ import annotations

import struct

# Start-of-frame markers of ISO/IEC 10918-1 (JPEG: C0-CF less DHT C4, JPG C8, DAC CC) and
# SOF55 of ISO/IEC 14495-1 (JPEG-LS); each is followed by precision, rows, columns, components.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
_SOS = 0xDA
# SOC then SIZ (ISO/IEC 15444-1 A.5.1); a JP2 wrapper puts a few small boxes before them.
_J2K_START = b"\xff\x4f\xff\x51"
_J2K_SEARCH = 1 << 16


def jpeg_size(src: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG or JPEG-LS frame header; None if there is none."""
    if src[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(src):
        if src[pos] != 0xFF:
            return None
        marker = src[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == _SOS:  # scan data before any frame header
            return None
        if marker in _SOF:
            if pos + 10 > len(src):
                return None
            rows, columns = struct.unpack(">HH", src[pos + 5 : pos + 9])
            return rows, columns, src[pos + 9]
        pos += 2 + int.from_bytes(src[pos + 2 : pos + 4], "big")
    return None


def j2k_size(src: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 (or HTJ2K) SIZ segment; None if there is none."""
    start = src.find(_J2K_START, 0, _J2K_SEARCH)
    if start < 0 or start + 4 + 38 > len(src):
        return None
    # Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz
    _, _, xsiz, ysiz, xosiz, yosiz, *_, csiz = struct.unpack(">HHIIIIIIIIH", src[start + 4 : start + 42])
    if xosiz > xsiz or yosiz > ysiz:
        return None
    return ysiz - yosiz, xsiz - xosiz, csiz


def rle_segments(src: bytes) -> int | None:
    """The number of segments in an RLE frame's 64-byte header (PS3.5 G.5); None if the header
    is unreadable: 1 to 15 segments, the first at byte 64, each after the one before, all within
    the frame."""
    if len(src) < 64:
        return None
    count, *offsets = struct.unpack("<16I", src[:64])
    if not 1 <= count <= 15 or offsets[0] != 64:
        return None
    used = offsets[:count]
    if any(b <= a for a, b in zip(used, used[1:])) or used[-1] >= len(src) or any(offsets[count:]):
        return None
    return count
