"""RIPEMD-160, which Cosmos addresses use: OpenSSL's when it offers it, else a pure-Python implementation.

OpenSSL 3 moved RIPEMD-160 to its legacy provider, so `hashlib.new("ripemd160")` fails on many current
systems. The fallback is slow (under 1 MB/s) but addresses only hash 32-byte digests, about 0.1 ms each.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["ripemd160", "ripemd160_pure"]


# Message-word order, rotation amounts and additive constants of the two parallel lines, from the
# RIPEMD-160 specification (Dobbertin, Bosselaers, Preneel 1996).
_RMD_R_LEFT = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    7, 4, 13, 1, 10, 6, 15, 3, 12, 0, 9, 5, 2, 14, 11, 8,
    3, 10, 14, 4, 9, 15, 8, 1, 2, 7, 0, 6, 13, 11, 5, 12,
    1, 9, 11, 10, 0, 8, 12, 4, 13, 3, 7, 15, 14, 5, 6, 2,
    4, 0, 5, 9, 7, 12, 2, 10, 14, 1, 3, 8, 11, 6, 15, 13,
)  # fmt: skip
_RMD_R_RIGHT = (
    5, 14, 7, 0, 9, 2, 11, 4, 13, 6, 15, 8, 1, 10, 3, 12,
    6, 11, 3, 7, 0, 13, 5, 10, 14, 15, 8, 12, 4, 9, 1, 2,
    15, 5, 1, 3, 7, 14, 6, 9, 11, 8, 12, 2, 10, 0, 4, 13,
    8, 6, 4, 1, 3, 11, 15, 0, 5, 12, 2, 13, 9, 7, 10, 14,
    12, 15, 10, 4, 1, 5, 8, 7, 6, 2, 13, 14, 0, 3, 9, 11,
)  # fmt: skip
_RMD_S_LEFT = (
    11, 14, 15, 12, 5, 8, 7, 9, 11, 13, 14, 15, 6, 7, 9, 8,
    7, 6, 8, 13, 11, 9, 7, 15, 7, 12, 15, 9, 11, 7, 13, 12,
    11, 13, 6, 7, 14, 9, 13, 15, 14, 8, 13, 6, 5, 12, 7, 5,
    11, 12, 14, 15, 14, 15, 9, 8, 9, 14, 5, 6, 8, 6, 5, 12,
    9, 15, 5, 11, 6, 8, 13, 12, 5, 12, 13, 14, 11, 8, 5, 6,
)  # fmt: skip
_RMD_S_RIGHT = (
    8, 9, 9, 11, 13, 15, 15, 5, 7, 7, 8, 11, 14, 14, 12, 6,
    9, 13, 15, 7, 12, 8, 9, 11, 7, 7, 12, 7, 6, 15, 13, 11,
    9, 7, 15, 11, 8, 6, 6, 14, 12, 13, 5, 14, 13, 13, 7, 5,
    15, 5, 8, 11, 14, 14, 6, 14, 6, 9, 12, 9, 12, 5, 15, 8,
    8, 5, 12, 9, 12, 5, 14, 6, 8, 13, 6, 5, 15, 13, 11, 11,
)  # fmt: skip
_RMD_K_LEFT = (0x00000000, 0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xA953FD4E)
_RMD_K_RIGHT = (0x50A28BE6, 0x5C4DD124, 0x6D703EF3, 0x7A6D76E9, 0x00000000)
_RMD_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
_MASK32 = 0xFFFFFFFF


def _rol32(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _MASK32


def _rmd_f(round_no: int, x: int, y: int, z: int) -> int:
    if round_no == 0:
        return x ^ y ^ z
    if round_no == 1:
        return (x & y) | (~x & z)
    if round_no == 2:
        return (x | (~y & _MASK32)) ^ z
    if round_no == 3:
        return (x & z) | (y & ~z)
    return x ^ (y | (~z & _MASK32))


def _ripemd160_compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    words = struct.unpack("<16I", block)
    al, bl, cl, dl, el = state
    ar, br, cr, dr, er = state
    for j in range(80):
        rnd = j >> 4
        t = (al + _rmd_f(rnd, bl, cl, dl) + words[_RMD_R_LEFT[j]] + _RMD_K_LEFT[rnd]) & _MASK32
        t = (_rol32(t, _RMD_S_LEFT[j]) + el) & _MASK32
        al, el, dl, cl, bl = el, dl, _rol32(cl, 10), bl, t
        # The right line applies the boolean functions in reverse order.
        t = (ar + _rmd_f(4 - rnd, br, cr, dr) + words[_RMD_R_RIGHT[j]] + _RMD_K_RIGHT[rnd]) & _MASK32
        t = (_rol32(t, _RMD_S_RIGHT[j]) + er) & _MASK32
        ar, er, dr, cr, br = er, dr, _rol32(cr, 10), br, t
    h0, h1, h2, h3, h4 = state
    return (
        (h1 + cl + dr) & _MASK32,
        (h2 + dl + er) & _MASK32,
        (h3 + el + ar) & _MASK32,
        (h4 + al + br) & _MASK32,
        (h0 + bl + cr) & _MASK32,
    )


def ripemd160_pure(data: bytes) -> bytes:
    """RIPEMD-160 in pure Python, for OpenSSL 3 builds whose default provider drops it."""
    # MD4-style padding: 0x80, zeros to 56 mod 64, then the bit length as little-endian u64.
    bit_length = struct.pack("<Q", (len(data) * 8) & (2**64 - 1))
    padded = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + bit_length
    state: tuple[int, ...] = _RMD_INIT
    for offset in range(0, len(padded), 64):
        state = _ripemd160_compress(state, padded[offset : offset + 64])
    return struct.pack("<5I", *state)


def _openssl_has_ripemd160() -> bool:
    try:
        hashlib.new("ripemd160", b"")
    except ValueError:
        return False
    return True


_HAVE_OPENSSL_RIPEMD160 = _openssl_has_ripemd160()


def ripemd160(data: bytes) -> bytes:
    """RIPEMD-160 digest (20 bytes); OpenSSL when it offers it, else the pure-Python fallback."""
    if _HAVE_OPENSSL_RIPEMD160:
        return hashlib.new("ripemd160", data).digest()
    return ripemd160_pure(data)
