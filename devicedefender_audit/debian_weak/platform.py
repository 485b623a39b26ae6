"""The platform facts that reach Debian's broken PRNG.

With Debian's patch the bytes fed to ``RAND_add`` are never hashed, but their *lengths* still
move the pool's index and counters, and a few native integers are still hashed as raw memory.
So a weak key depends on exactly these facts of the machine that made it:

* byte order and width of ``long`` (the ``md_count`` pair hashed on every output block),
* byte order of ``pid_t`` (4 bytes on every Linux ABI; the only varying input),
* ``sizeof(time_t)`` (``bnrand`` calls ``RAND_add(&tim, sizeof tim)`` before each draw),
* ``sizeof(unsigned long)`` (``RAND_poll`` adds pid, uid and time as ``unsigned long``),
* ``sizeof(struct stat)`` (``RAND_load_file`` adds the stat buffer of ``~/.rnd``),
* ``BN_ULONG`` width (bounds the sieve's delta in ``probable_prime``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    """One CPU ABI as Debian's OpenSSL 0.9.8 saw it."""

    name: str
    byteorder: str  # struct prefix: "<" little endian, ">" big endian
    long_size: int
    stat_size: int

    @property
    def time_size(self) -> int:
        """``time_t`` is a ``long`` on every Linux ABI of the era."""
        return self.long_size

    @property
    def word_bits(self) -> int:
        """``BN_ULONG`` is the native word on these builds."""
        return self.long_size * 8

    def pack_pid(self, pid: int) -> bytes:
        return struct.pack(self.byteorder + "i", pid)

    def pack_counts(self, count0: int, count1: int) -> bytes:
        """Raw memory of ``long md_c[2]``."""
        code = "i" if self.long_size == 4 else "q"
        return struct.pack(self.byteorder + code * 2, count0, count1)


#: i386: 32-bit little endian, glibc ``struct stat`` without large-file support is 88 bytes.
LE32 = Platform(name="le32", byteorder="<", long_size=4, stat_size=88)
#: amd64: 64-bit little endian, ``struct stat`` is 144 bytes.
LE64 = Platform(name="le64", byteorder="<", long_size=8, stat_size=144)
#: PowerPC (and other 32-bit big-endian ports): same sizes as i386, other byte order.
BE32 = Platform(name="be32", byteorder=">", long_size=4, stat_size=88)

PLATFORMS: dict[str, Platform] = {p.name: p for p in (LE32, LE64, BE32)}
