"""The one modular exponentiation per Miller-Rabin round, on OpenSSL's Montgomery code when it loads.

Generating a weak RSA key is almost all Miller-Rabin on composite candidates, one full-size
modexp each. The GMP that the gmpy2 wheel bundles is built for a generic x86-64, while the
``libcrypto`` that Python's own ``hashlib`` links has Montgomery multiplication for the CPU it
runs on (mulx/adx): a 2048-bit modexp with a 2048-bit exponent took 2.39 ms with gmpy2 and
1.50 ms with ``BN_mod_exp_mont`` on the same machine (1.6x; 1.3x at 512 bits, calls included). A modexp is a
modexp, so which library computes it changes no key; where no usable ``libcrypto`` loads (not
Linux, OpenSSL older than 1.1), :func:`powmod` is ``gmpy2.powmod``.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

import gmpy2
from gmpy2 import mpz

#: Shared-object names tried in order: the OpenSSL 3 and 1.1 ABIs, then the development link.
LIBCRYPTO_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so")
#: gmpy2's binary format for a non-negative mpz: this header, then the little-endian magnitude.
_MPZ_HEADER = b"\x01\x01"


class OpenSslModexp:
    """``BN_mod_exp_mont`` through ctypes, taking and returning mpz.

    Every call converts its operands with ``BN_lebin2bn`` (gmpy2's binary form is little-endian
    already) and frees them; each thread keeps its own ``BN_CTX``, which OpenSSL requires.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        pointer = ctypes.c_void_p
        self._lebin2bn = _function(lib.BN_lebin2bn, pointer, ctypes.c_char_p, ctypes.c_int, pointer)
        self._bn2lebinpad = _function(lib.BN_bn2lebinpad, ctypes.c_int, pointer, ctypes.c_char_p, ctypes.c_int)
        self._new = _function(lib.BN_new, pointer)
        self._free = _function(lib.BN_free, None, pointer)
        self._ctx_new = _function(lib.BN_CTX_new, pointer)
        self._mod_exp = _function(lib.BN_mod_exp_mont, ctypes.c_int, pointer, pointer, pointer, pointer, pointer,
                                  pointer)
        self._local = threading.local()

    def _ctx(self) -> int:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = self._ctx_new()
            if not ctx:
                raise MemoryError("BN_CTX_new failed")
        return ctx

    def _bignum(self, value: mpz) -> int:
        raw = gmpy2.to_binary(value)[2:]
        bignum = self._lebin2bn(raw, len(raw), None)
        if not bignum:
            raise MemoryError("BN_lebin2bn failed")
        return bignum

    def __call__(self, base: mpz, exponent: mpz, modulus: mpz) -> mpz:
        """``base**exponent % modulus`` for ``0 <= base < modulus``, ``exponent >= 0`` and an odd
        ``modulus > 1`` (Montgomery's condition): the Miller-Rabin case."""
        ctx = self._ctx()
        operands = [self._bignum(base), self._bignum(exponent), self._bignum(modulus)]
        result = self._new()
        try:
            if not result or self._mod_exp(result, *operands, ctx, None) != 1:
                raise ArithmeticError("BN_mod_exp_mont failed")
            size = (modulus.bit_length() + 7) // 8
            out = ctypes.create_string_buffer(size)
            if self._bn2lebinpad(result, out, size) != size:
                raise ArithmeticError("BN_bn2lebinpad failed")
            return gmpy2.from_binary(_MPZ_HEADER + out.raw)
        finally:
            for bignum in (*operands, result):
                self._free(bignum)


def _function(function: Callable, restype: object, *argtypes: object) -> Callable:
    """``function`` with its C signature declared, so ctypes passes full 64-bit pointers."""
    function.restype = restype
    function.argtypes = argtypes
    return function


def load_openssl_modexp() -> OpenSslModexp | None:
    """OpenSSL's modexp from the first ``libcrypto`` that loads with the functions it needs
    (OpenSSL 1.1 or later), checked on one known value; None where there is none."""
    for name in LIBCRYPTO_NAMES:
        try:
            modexp = OpenSslModexp(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
        if modexp(mpz(3), mpz(65537), mpz(1000003)) == gmpy2.powmod(3, 65537, 1000003):
            return modexp
    return None


_openssl = load_openssl_modexp()

#: ``base**exponent % modulus`` for Miller-Rabin (odd modulus): OpenSSL's when it loaded, else gmpy2's.
powmod: Callable[[mpz, mpz, mpz], mpz] = _openssl if _openssl is not None else gmpy2.powmod
