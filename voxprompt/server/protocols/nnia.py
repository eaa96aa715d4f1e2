"""The "NNIA" v1 array wire format of the nnInteractive v2 remote protocol (little-endian).

``b"NNIA"``, ``u8 version=1``, ``u8 codec`` (1 = blosc2 ZSTD, 2 = LZ4), ``u8 ndim``,
``u8 len(dtype)``, dtype name (ASCII, numpy ``.name``), ``ndim x i64`` shape, ``u32 nchunks``,
then per chunk ``u64 ulen``, ``u64 clen`` and ``clen`` bytes of ``blosc2.compress2`` output
(at most 1 GiB uncompressed per chunk). Arrays are C-contiguous.

:func:`unpack` validates the header, dtype (numeric and bool only) and the declared size against
a limit *before* allocating or decompressing anything.
"""
from __future__ import annotations

import struct

import blosc2
import numpy as np

from ..errors import BadRequest
from ..security import check_size

MAGIC = b"NNIA"
VERSION = 1
CHUNK_BYTES = 1 << 30
CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
ALLOWED_DTYPES = frozenset(
    ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
     "float16", "float32", "float64"])
MAX_NDIM = 8


def pack(array: np.ndarray, codec: int = 1, clevel: int = 3, shuffle: bool = False) -> bytes:
    """Serialise ``array`` (masks: ``shuffle=False``; multi-byte images compress better with it)."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    name = arr.dtype.name.encode("ascii")
    parts = [struct.pack(f"<4sBBBB{len(name)}s", MAGIC, VERSION, codec, arr.ndim, len(name), name),
             struct.pack(f"<{arr.ndim}q", *arr.shape)]
    raw = memoryview(arr).cast("B") if arr.nbytes else memoryview(b"")
    total = raw.nbytes
    starts = range(0, total, CHUNK_BYTES)
    parts.append(struct.pack("<I", len(starts)))
    filt = blosc2.Filter.SHUFFLE if shuffle else blosc2.Filter.NOFILTER
    for start in starts:
        end = min(start + CHUNK_BYTES, total)
        comp = blosc2.compress2(raw[start:end], typesize=arr.dtype.itemsize, codec=CODECS[codec],
                                clevel=clevel, filters=[filt])
        parts.append(struct.pack("<QQ", end - start, len(comp)))
        parts.append(comp)
    return b"".join(parts)


def _fail(msg: str) -> BadRequest:
    return BadRequest(f"malformed NNIA array: {msg}")


def unpack(buf: bytes, max_bytes: int | None = None, what: str = "array") -> np.ndarray:
    """Parse an NNIA body; BadRequest (400) if malformed, TooLarge (413) above ``max_bytes``."""
    try:
        return _unpack(memoryview(buf), max_bytes, what)
    except struct.error:
        raise _fail("truncated") from None


def _unpack(mv: memoryview, max_bytes: int | None, what: str) -> np.ndarray:
    if len(mv) < 8:
        raise _fail("shorter than its 8-byte header")
    magic, version, codec, ndim, name_len = struct.unpack_from("<4sBBBB", mv, 0)
    if magic != MAGIC:
        raise _fail(f"bad magic {bytes(magic)!r} (expected b'NNIA')")
    if version != VERSION:
        raise _fail(f"unsupported version {version}")
    if codec not in CODECS:
        raise _fail(f"unsupported codec id {codec}")
    if ndim > MAX_NDIM:
        raise _fail(f"{ndim} dimensions")
    off = 8
    try:
        name = bytes(mv[off:off + name_len]).decode("ascii")
    except UnicodeDecodeError:
        raise _fail("dtype name is not ASCII") from None
    if name not in ALLOWED_DTYPES:
        raise _fail(f"dtype {name!r} is not a numeric type")
    off += name_len
    shape = struct.unpack_from(f"<{ndim}q", mv, off)
    off += 8 * ndim
    if any(n < 0 for n in shape):
        raise _fail(f"negative shape {shape}")
    dtype = np.dtype(name)
    total = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if max_bytes is not None:
        check_size(total, max_bytes, what)
    (nchunks,) = struct.unpack_from("<I", mv, off)
    off += 4
    out = np.empty(total // dtype.itemsize, dtype=dtype)
    dst = out.view(np.uint8)
    written = 0
    for _ in range(nchunks):
        ulen, clen = struct.unpack_from("<QQ", mv, off)
        off += 16
        if written + ulen > total or ulen % dtype.itemsize or off + clen > len(mv):
            raise _fail("chunk sizes do not match the declared shape")
        src = mv[off:off + clen]
        try:
            nbytes, _, _ = blosc2.get_cbuffer_sizes(src)
            if nbytes != ulen:
                raise _fail(f"chunk says {ulen} bytes, its blosc2 frame {nbytes}")
            blosc2.decompress2(src, dst=dst[written:written + ulen])
        except (RuntimeError, ValueError, TypeError) as exc:
            raise _fail(f"blosc2 could not decompress a chunk ({exc.__class__.__name__})") from None
        written += ulen
        off += clen
    if written != total:
        raise _fail(f"payload holds {written} bytes, the shape needs {total}")
    return out.reshape(shape)
