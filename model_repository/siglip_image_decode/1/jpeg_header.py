"""JPEG header parsing for siglip_image_decode: size, colour coding and orientation.

Pure Python, no pixel work: reads the markers up to the first scan. Owns what is refused
before decoding (limits, codings nvJPEG and libjpeg don't share) and the EXIF/XMP orientation,
read the way Pillow's ImageOps.exif_transpose reads it (the gateway's exact mode).
"""

import re
from dataclasses import dataclass

_SOF = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive",
        0xC3: "lossless", 0xC5: "differential sequential", 0xC6: "differential progressive",
        0xC7: "differential lossless", 0xC9: "arithmetic sequential",
        0xCA: "arithmetic progressive", 0xCB: "arithmetic lossless",
        0xCD: "arithmetic differential sequential", 0xCE: "arithmetic differential progressive",
        0xCF: "arithmetic differential lossless"}
_DECODED_SOF = (0xC0, 0xC1, 0xC2)  # 8-bit Huffman: what nvJPEG and every libjpeg decode
_STANDALONE = frozenset([0x00, 0x01, 0xD8, *range(0xD0, 0xD8)])  # no length; FF00: junk
_FILL = re.compile(rb"\xff+")
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # what Pillow's getexif reads


class JpegError(ValueError):
    """This row cannot be decoded here; the message says why (no row index)."""


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int
    orientation: int  # EXIF (else XMP) orientation as Pillow's exif_transpose reads it; 1 = none
    ycc: bool  # libjpeg's colour-space choice is YCbCr (or gray), not RGB/CMYK/YCCK


def parse_header(data: bytes, max_pixels: int, max_bytes: int) -> JpegHeader:
    """The header fields decoding depends on, and every limit; raises JpegError. No pixel work."""
    if len(data) > max_bytes:
        raise JpegError(f"JPEG is {len(data)} bytes, more than the limit of {max_bytes}")
    if data[:3] != b"\xff\xd8\xff":
        raise JpegError("not a JPEG (no SOI marker)")
    pos, n = 2, len(data)
    sof = exif = xmp = adobe = None
    jfif = False
    while True:
        # Junk between segments: Pillow and libjpeg skip it too (libjpeg warns "extraneous
        # bytes before marker"); then fill bytes. Searched in C: a row may be 32 MiB of it.
        fill = _FILL.search(data, pos)
        pos = n if fill is None else fill.end()
        if pos >= n:
            raise JpegError("truncated JPEG header")
        marker, pos = data[pos], pos + 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            raise JpegError("JPEG has no image data (EOI before any scan)")
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > n:
            raise JpegError("truncated JPEG header")
        seg, pos = data[pos + 2:pos + length], pos + length
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker in _SOF and sof is None:
            sof = (marker, seg)
        elif marker == 0xE0 and seg.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xE1 and seg.startswith(b"Exif\x00\x00"):
            exif = seg if exif is None else exif + seg[6:]  # Pillow joins them the same way
        elif marker == 0xE1 and seg.startswith(_XMP):
            xmp = seg[len(_XMP):]  # the last one wins, as in Pillow
        elif marker == 0xEE and seg.startswith(b"Adobe") and len(seg) >= 12:
            adobe = seg[11]
    if sof is None:
        raise JpegError("JPEG has no frame header (SOF) before its first scan")
    kind, seg = sof
    if kind not in _DECODED_SOF:
        raise JpegError(f"unsupported JPEG coding: {_SOF[kind]}")
    if len(seg) < 6 or len(seg) < 6 + 3 * seg[5]:
        raise JpegError("corrupt JPEG frame header")
    precision, height = seg[0], int.from_bytes(seg[1:3], "big")
    width, components = int.from_bytes(seg[3:5], "big"), seg[5]
    if precision != 8:
        raise JpegError(f"unsupported {precision}-bit JPEG (8-bit only)")
    if components not in (1, 3, 4):
        raise JpegError(f"unsupported JPEG with {components} colour components")
    if width < 1 or height < 1:
        raise JpegError(f"JPEG frame header has no size ({width}x{height})")
    if width * height > max_pixels:
        raise JpegError(f"JPEG is {width}x{height} = {width * height} pixels, more than the "
                        f"limit of {max_pixels}")
    # libjpeg and nvJPEG fail on a stream cut short; so does Pillow. Catch it on every path:
    # a marker can't occur inside entropy-coded data, so the EOI is after the last scan.
    if data.find(b"\xff\xd9", pos) < 0:
        raise JpegError("truncated JPEG (no end-of-image marker)")
    ids = bytes(seg[6 + 3 * i] for i in range(min(components, 3)))
    if components == 3:  # libjpeg's rule (jdapimin.c default_decompress_parms)
        ycc = jfif or (adobe != 0 if adobe is not None else ids != b"RGB")
    else:
        ycc = components == 1
    return JpegHeader(width, height, components, _orientation(exif, xmp), ycc)


def _orientation(exif: bytes | None, xmp: bytes | None) -> int:
    value = _exif_orientation(exif) if exif is not None else None
    if value is None and xmp is not None:  # Pillow falls back to XMP only when EXIF has none
        match = _XMP_ORIENTATION.search(xmp)
        value = int(match[2]) if match else None
    return value if value in range(2, 9) else 1


def _exif_orientation(exif: bytes) -> int | None:
    """IFD0's Orientation: None if absent, 0 if present but not one integer (Pillow: no-op)."""
    tiff = exif[6:]
    order = {b"II*\x00": "little", b"MM\x00*": "big"}.get(tiff[:4])
    if order is None or len(tiff) < 10:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    for entry in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        raw = tiff[ifd + 2 + 12 * entry:ifd + 14 + 12 * entry]
        if len(raw) < 12:
            return None
        if int.from_bytes(raw[:2], order) != 0x0112:
            continue
        kind, count = int.from_bytes(raw[2:4], order), int.from_bytes(raw[4:8], order)
        width = {3: 2, 8: 2, 4: 4, 9: 4}.get(kind)  # (S)SHORT, (S)LONG; other types: no-op
        return int.from_bytes(raw[8:8 + width], order) if width and count == 1 else 0
    return None


