"""Checking keys against a user-supplied list of known moduli or primes.

Published research and incident reports list moduli that were factored, primes that weak
generators produce again and again, and keys whose private halves leaked. A fleet key that
shares a prime with such an entry is factorable; one equal to a listed modulus is that very
key. The list is read from a text file, one integer per line:

* decimal digits,
* ``0x`` followed by hex digits,
* ``Modulus=`` followed by hex digits (what ``openssl x509 -noout -modulus`` prints),

with blank lines and ``#`` comments ignored. Bare hex is refused: ``1234`` would be ambiguous.
Entries are named ``file:line`` in findings, never by value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gmpy2
from gmpy2 import mpz

from devicedefender_audit.factoring.sharing import Key, index_keys
from devicedefender_audit.factoring.trees import product, remainders

_ENTRY = re.compile(r"(?:(?P<dec>[0-9]+)|0[xX](?P<hex>[0-9a-fA-F]+)|Modulus=(?P<ossl>[0-9a-fA-F]+))")


@dataclass(frozen=True)
class KnownValues:
    """Distinct known moduli or primes, each with where it was listed."""

    values: tuple[mpz, ...]
    labels: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, source: str) -> KnownValues:
        values: dict[mpz, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = _ENTRY.fullmatch(line)
            if not match:
                raise ValueError(f"{source}:{number}: expected a decimal, 0x-hex or Modulus=hex integer")
            value = mpz(match["dec"]) if match["dec"] else mpz(match["hex"] or match["ossl"], 16)
            if value < 2:
                raise ValueError(f"{source}:{number}: {value} is neither a prime nor a modulus")
            values.setdefault(value, f"{source}:{number}")
        return cls(tuple(values), tuple(values.values()))

    @classmethod
    def load(cls, path: Path) -> KnownValues:
        return cls.parse(Path(path).read_text(), Path(path).name)

    @classmethod
    def combined(cls, known: KnownValues | None, entries: Iterable[tuple[str, int]]) -> KnownValues | None:
        """``known`` plus ``entries`` (label, value), e.g. the account's CA keys; a value listed
        twice keeps its first label. None when there is nothing to compare with."""
        values = dict(zip(known.values, known.labels)) if known else {}
        for label, value in entries:
            values.setdefault(mpz(value), label)
        return cls(tuple(values), tuple(values.values())) if values else None


@dataclass(frozen=True)
class KnownMatch:
    """Known entries (``file:line``) a key shares a prime with, or is equal to."""

    shares_prime_with: tuple[str, ...] = ()
    equal_to: tuple[str, ...] = ()
    #: The matched key's modulus, kept from the pass that matched it, so that a caller who needs
    #: the key (the CA check's partners) does not read it back from the store, once per match.
    modulus: mpz | None = None


def match_known(keys: Iterable[Key], known: KnownValues, fleet_product: mpz | None = None) -> dict[str, KnownMatch]:
    """Keys that share a factor with, or equal, a known entry; by id.

    One remainder tree over the known values gives ``fleet_product mod v`` for every entry v, so
    the fleet is reduced once, not once per entry. ``fleet_product`` (of the keys' distinct
    moduli) may be passed when at hand, e.g. :attr:`.FleetState.product` with the fleet's keys
    streamed from the inventory; the keys are then read only if some entry matches.
    """
    if fleet_product is None:
        keys = list(keys)
        fleet_product = product(list(index_keys(keys)))
    hits = [
        (value, label)
        for value, label, r in zip(known.values, known.labels, remainders(fleet_product, known.values))
        if gmpy2.gcd(value, r) != 1
    ]
    if not hits:
        return {}
    combined = product([value for value, _ in hits])
    matches: dict[str, KnownMatch] = {}
    for key_id, modulus in keys:
        modulus = mpz(modulus)
        if gmpy2.gcd(modulus, combined) != 1:
            matches[key_id] = KnownMatch(
                tuple(label for value, label in hits if value != modulus and gmpy2.gcd(value, modulus) != 1),
                tuple(label for value, label in hits if value == modulus),
                modulus,
            )
    matched = {label for match in matches.values() for label in (*match.shares_prime_with, *match.equal_to)}
    if any(label not in matched for _, label in hits):
        raise ValueError("fleet_product holds a modulus that none of the keys has")
    return matches
