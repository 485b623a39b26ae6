"""The fleet's product, kept between audits so new certificates are checked incrementally.

A full batch GCD over a million moduli takes many minutes; a thousand new certificates do not
need it. The state keeps P, the product of the fleet's distinct moduli. A new modulus shares a
prime with the fleet exactly when gcd(N, P mod N) > 1; one remainder tree gives P mod N for a
whole batch. Only when that finds something are the fleet's moduli (``existing``, which the
caller streams from its inventory) scanned to name the other certificates.

Besides P the state keeps the moduli of the keys that currently have a finding ("flagged"),
with their ids. Sharing is a property of pairs, so every flagged key's partners are flagged too:
re-scanning the flagged keys together with the new ones and their partners reproduces exactly
what a full recomputation reports -- the property the tests check. The state holds moduli and
their product, which are public; it never holds a factor.

File format: ``MAGIC``, an 8-byte big-endian header length, a JSON header (counts, flagged
moduli in hex with their ids, SHA-256 and length of the product, SHA-256 of the header itself),
then the product as ``gmpy2.to_binary``. About 256 MB for a million RSA-2048 keys.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import gmpy2
from gmpy2 import mpz

from devicedefender_audit.factoring.framing import FleetStateError, canonical_json, frame, read_frame
from devicedefender_audit.factoring.sharing import FleetFinding, Key, index_keys, scan_fleet
from devicedefender_audit.factoring.trees import product, remainders

MAGIC = b"DDA-FLEET-PRODUCT\n"
VERSION = 2


def _digest(header: dict) -> str:
    """SHA-256 of the header's canonical JSON: the flagged moduli decide findings, so a damaged
    digit there must be caught like a damaged product."""
    return hashlib.sha256(canonical_json(header)).hexdigest()


class FleetState:
    """Product of the fleet's distinct moduli plus the keys that currently have a finding."""

    def __init__(
        self,
        product: mpz | int = 1,
        flagged: dict[mpz, list[str]] | None = None,
        keys: int = 0,
        distinct_moduli: int = 0,
    ) -> None:
        self.product = mpz(product)
        self.flagged = dict(flagged or {})
        self.keys = keys
        self.distinct_moduli = distinct_moduli

    @classmethod
    def build(cls, keys: Iterable[Key], workers: int = 1) -> tuple[FleetState, dict[str, FleetFinding]]:
        """Full batch GCD over ``keys``: the state to carry forward and every finding."""
        scan = scan_fleet(keys, workers)
        return cls(scan.product, scan.flagged, scan.keys, scan.distinct_moduli), scan.findings

    def flagged_keys(self) -> list[Key]:
        """(id, modulus) of every key that currently has a finding."""
        return [(key_id, int(m)) for m, ids in self.flagged.items() for key_id in ids]

    def findings(self) -> dict[str, FleetFinding]:
        """Every current finding, as a full recomputation over the fleet would report it."""
        return scan_fleet(self.flagged_keys()).findings

    def add(self, new: Iterable[Key], existing: Iterable[Key]) -> dict[str, FleetFinding]:
        """Check ``new`` keys against the fleet and each other, then take them into the state.

        ``existing`` must be the keys already in the state (id, modulus), e.g. a generator over
        the inventory; it is read only if a new modulus shares a factor with the fleet. Returns the
        finding of every key whose finding appeared or changed: new keys and their partners.
        """
        index = index_keys(new)
        flagged_ids = {key_id for ids in self.flagged.values() for key_id in ids}
        already = sorted(key_id for ids in index.values() for key_id in ids if key_id in flagged_ids)
        if already:
            raise ValueError(f"already in the fleet: {', '.join(already[:5])}")
        moduli = list(index)
        common = [gmpy2.gcd(m, r) for m, r in zip(moduli, remainders(self.product, moduli))]
        hits = {m: g for m, g in zip(moduli, common) if g != 1}
        partners = self._partners(existing, hits, index)
        candidates = {m: list(ids) for m, ids in (*partners.items(), *self.flagged.items())}
        for m, ids in index.items():
            candidates.setdefault(m, []).extend(ids)
        scan = scan_fleet((key_id, m) for m, ids in candidates.items() for key_id in ids)
        fresh = [m for m in moduli if m not in self.flagged and m not in partners]
        self.product *= product(fresh)
        self.flagged = scan.flagged
        self.keys += sum(map(len, index.values()))
        self.distinct_moduli += len(fresh)
        touched = [key_id for ids in (*index.values(), *partners.values()) for key_id in ids]
        return {key_id: scan.findings[key_id] for key_id in touched if key_id in scan.findings}

    def _partners(
        self, existing: Iterable[Key], hits: dict[mpz, mpz], index: dict[mpz, list[str]]
    ) -> dict[mpz, list[str]]:
        """The fleet's keys sharing a factor with a hit, checked to account for every hit."""
        if not hits:
            return {}
        new_ids = {key_id for ids in index.values() for key_id in ids}
        combined = product(list(hits))
        found: dict[mpz, list[str]] = {}
        for key_id, modulus in existing:
            modulus = mpz(modulus)
            if gmpy2.gcd(modulus, combined) != 1:
                if key_id in new_ids:
                    raise ValueError(f"already in the fleet: {key_id}")
                found.setdefault(modulus, []).append(key_id)
        explained = product(list(found))
        if any(gmpy2.gcd(m, explained) != common for m, common in hits.items()):
            raise FleetStateError(
                "the stored product holds a modulus that no existing key has: the state is stale "
                "(keys removed without remove(), or another fleet); rebuild it with build()"
            )
        return found

    def remove(self, gone: Iterable[Key]) -> dict[str, FleetFinding | None]:
        """Take keys out of the state (certificates deleted or revoked for good).

        Returns the remaining keys whose finding changed; ``None`` where a key no longer has one.
        """
        index = index_keys(gone)
        removed = {key_id for ids in index.values() for key_id in ids}
        old = self.findings()
        flagged = {m: list(ids) for m, ids in self.flagged.items()}
        divisors = []
        for m, ids in index.items():
            # An unflagged modulus has one holder; a flagged one is held by the ids listed for it.
            holders = flagged.pop(m, ids[:1])
            if not set(ids) <= set(holders):
                raise FleetStateError(f"{ids[-1]}: not in the fleet with this modulus")
            remaining = [key_id for key_id in holders if key_id not in removed]
            if remaining:
                flagged[m] = remaining  # a duplicate keeps the modulus in the fleet
            else:
                divisors.append(m)
        quotient, rest = divmod(self.product, product(divisors))
        if rest:
            raise FleetStateError("a removed modulus is not in the stored product")
        scan = scan_fleet((key_id, m) for m, ids in flagged.items() for key_id in ids)
        self.product = quotient
        self.flagged = scan.flagged
        self.keys -= len(removed)
        self.distinct_moduli -= len(divisors)
        return {
            key_id: scan.findings.get(key_id)
            for key_id, finding in old.items()
            if key_id not in removed and scan.findings.get(key_id) != finding
        }

    def to_parts(self) -> list[bytes]:
        """The file's bytes as (header, product): written one after the other, with no copy of
        the product joined to its header (a quarter of a gigabyte at a million keys)."""
        blob = gmpy2.to_binary(self.product)
        header = {
            "version": VERSION,
            "keys": self.keys,
            "distinct_moduli": self.distinct_moduli,
            "product_bytes": len(blob),
            "product_sha256": hashlib.sha256(blob).hexdigest(),
            "flagged": [[format(m, "x"), ids] for m, ids in sorted(self.flagged.items())],
        }
        header["header_sha256"] = _digest(header)
        return [frame(MAGIC, header), blob]

    def _write(self, out: BinaryIO) -> None:
        out.writelines(self.to_parts())

    def to_bytes(self) -> bytes:
        return b"".join(self.to_parts())

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the previous state, never half a product."""
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as out:
            self._write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> FleetState:
        """Read a state written by :meth:`to_parts`; any damage is a :class:`FleetStateError`."""
        header, blob = read_frame(data, MAGIC, "fleet product file", VERSION)
        if header.pop("header_sha256", None) != _digest(header):
            raise FleetStateError("fleet product header is damaged (checksum mismatch)")
        try:
            size, digest = int(header["product_bytes"]), str(header["product_sha256"])
            keys, distinct = int(header["keys"]), int(header["distinct_moduli"])
            flagged = {mpz(m, 16): list(ids) for m, ids in header["flagged"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise FleetStateError(f"damaged fleet product header: {exc!r}") from exc
        if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
            raise FleetStateError("fleet product is truncated or damaged (checksum mismatch)")
        return cls(gmpy2.from_binary(bytes(blob)), flagged, keys, distinct)

    @classmethod
    def load(cls, path: Path) -> FleetState:
        return cls.from_bytes(Path(path).read_bytes())
