"""The per-page compressors of the kdump-compressed format.

makedumpfile (``write_kdump_pages_cyclic``) compresses each page on its own and marks the
page descriptor with the codec's flag: zlib ``compress2`` level 1 (zlib-wrapped stream),
raw ``lzo1x_1_compress`` output, a raw snappy block, or one zstd frame at level 1. A page
whose compressed form is not smaller than the page is stored raw (flags 0).

Libraries: stdlib :mod:`zlib`, ``python-lzo`` (liblzo2's lzo1x_1, byte-identical to
makedumpfile's), ``cramjam`` (raw snappy), ``zstandard``. All release the GIL while they
work, so compressing on threads scales across CPUs.

The capture pipeline calls :attr:`Codec.compress_pages` with a batch's pages (``bytes``,
one per page): each codec maps its library function over the list in C (no Python frame
per page), which is most of what the per-page cost above the codec itself was.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from itertools import repeat
from typing import Callable

DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20

CODEC_FLAGS = DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_SNAPPY | DUMP_DH_COMPRESSED_ZSTD


class CodecError(Exception):
    """A page could not be decompressed to exactly one page."""


@dataclass(frozen=True)
class Codec:
    name: str
    flag: int
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int], bytes]
    #: compress a list of pages (``bytes``); one stored form per page, any bytes-like object
    compress_pages: Callable[[list[bytes]], list] | None = None

    def compress_many(self, pages: list[bytes]) -> list:
        """Each page compressed (the stored form may be longer than the page: the caller
        stores those raw)."""
        if self.compress_pages is not None:
            return self.compress_pages(pages)
        return list(map(self.compress, pages))


def _zlib_decompress(data: bytes, page_size: int) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, page_size + 1)
    return out


def _lzo_compress(page: bytes) -> bytes:
    global _lzo_compress
    import lzo
    # python-lzo parses its input with "s#", which refuses memoryviews: hand it bytes.
    def compress(page: bytes) -> bytes:       # bound once, in place of this loader
        return bytes(lzo.compress(bytes(page), 1, False))
    _lzo_compress = compress
    return compress(page)


def _lzo_compress_pages(pages: list[bytes]) -> list[bytes]:
    import lzo
    return list(map(lzo.compress, pages, repeat(1), repeat(False)))


def _lzo_decompress(data: bytes, page_size: int) -> bytes:
    import lzo
    return lzo.decompress(data, False, page_size)


def _snappy_compress(page: bytes) -> bytes:
    import cramjam
    return bytes(cramjam.snappy.compress_raw(page))


def _snappy_compress_pages(pages: list[bytes]) -> list:
    import cramjam
    return list(map(cramjam.snappy.compress_raw, pages))  # cramjam Buffers: bytes-like


def _snappy_decompress(data: bytes, page_size: int) -> bytes:
    import cramjam
    return bytes(cramjam.snappy.decompress_raw(data))


_zstd_local = threading.local()


def _zstd_compress(page: bytes) -> bytes:
    c = getattr(_zstd_local, "c", None)
    if c is None:
        import zstandard
        c = _zstd_local.c = zstandard.ZstdCompressor(level=1, write_checksum=False,
                                                     write_content_size=True)
    return c.compress(page)


def _zstd_compress_pages(pages: list[bytes]) -> list[bytes]:
    c = getattr(_zstd_local, "c", None)
    if c is None:
        _zstd_compress(b"")
        c = _zstd_local.c
    return list(map(c.compress, pages))


def _zstd_decompress(data: bytes, page_size: int) -> bytes:
    d = getattr(_zstd_local, "d", None)
    if d is None:
        import zstandard
        d = _zstd_local.d = zstandard.ZstdDecompressor()
    return d.decompress(data, max_output_size=page_size)


def _none(data: bytes, *_: int) -> bytes:
    return bytes(data)


CODECS: dict[str, Codec] = {
    "none": Codec("none", 0, _none, _none),
    "zlib": Codec("zlib", DUMP_DH_COMPRESSED_ZLIB, lambda p: zlib.compress(p, 1), _zlib_decompress,
                  lambda pages: list(map(zlib.compress, pages, repeat(1)))),
    "lzo": Codec("lzo", DUMP_DH_COMPRESSED_LZO, lambda p: _lzo_compress(p), _lzo_decompress,
                 _lzo_compress_pages),
    "snappy": Codec("snappy", DUMP_DH_COMPRESSED_SNAPPY, _snappy_compress, _snappy_decompress,
                    _snappy_compress_pages),
    "zstd": Codec("zstd", DUMP_DH_COMPRESSED_ZSTD, _zstd_compress, _zstd_decompress,
                  _zstd_compress_pages),
}

_BY_FLAG = {c.flag: c for c in CODECS.values()}


def codec_for_flags(flags: int) -> Codec | None:
    """The codec a ``page_desc.flags`` (or header ``status``) value names, None if unknown."""
    return _BY_FLAG.get(flags & CODEC_FLAGS) if (flags & CODEC_FLAGS) or flags == 0 else None


def decompress_page(flags: int, data: bytes, page_size: int) -> bytes:
    """Decode one stored page; raise :class:`CodecError` unless exactly one page results."""
    if flags & ~CODEC_FLAGS:
        raise CodecError(f"unknown page flags {flags:#x}")
    codec = _BY_FLAG.get(flags)
    if codec is None:
        raise CodecError(f"page flags {flags:#x} name more than one codec")
    if flags == 0:
        if len(data) != page_size:
            raise CodecError(f"raw page is {len(data)} bytes, not {page_size}")
        return bytes(data)
    try:
        out = codec.decompress(bytes(data), page_size)
    except Exception as exc:  # each library has its own exception types
        raise CodecError(f"{codec.name}: {exc}") from None
    if len(out) != page_size:
        raise CodecError(f"{codec.name} gave {len(out)} bytes, not {page_size}")
    return out


def codec_available(name: str) -> bool:
    try:
        CODECS[name].compress(b"\0" * 64)
        return True
    except Exception:
        return False
