"""Which keys of a fleet share a prime with another, and which are the very same key.

Two RSA keys that share a prime are both broken: gcd(N1, N2) is that prime, and dividing gives
the other two. Batch GCD (:mod:`.trees`) tells, for every modulus, the part it shares with the
rest of the fleet; this module turns that into *which* other certificates it shares with,
naming them by id. Findings never carry a factor, only ids and counts.

Identical moduli are set aside first and reported as duplicates, not as shared primes: a
repeated modulus is not factorable from public data (gcd(N, N) = N reveals nothing), but every
holder of one of those private keys holds all of them. Batch GCD then runs on distinct moduli,
so a modulus whose gcd with the others is itself really has both primes in other keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from heapq import merge
from itertools import groupby, islice

import gmpy2
from gmpy2 import mpz

from devicedefender_audit.factoring.trees import batch_gcd

#: ``(certificate id, RSA modulus)``: what the fleet checks take.
Key = tuple[str, int]

#: Ids named in a finding; the count says how many there are in all. A fleet where one prime or
#: one key is in thousands of devices must not produce thousands of ids per certificate.
MAX_LISTED = 10


@dataclass(frozen=True)
class FleetFinding:
    """What the rest of the fleet reveals about one key: ids and counts, never a factor."""

    shared_prime_with: tuple[str, ...] = ()  # sorted; the first MAX_LISTED
    shared_prime_count: int = 0
    same_modulus_as: tuple[str, ...] = ()  # sorted; the first MAX_LISTED
    same_modulus_count: int = 0


@dataclass(frozen=True)
class FleetScan:
    """A full scan: findings by id, and what an incremental check needs to carry on from it."""

    findings: dict[str, FleetFinding]
    product: mpz  # of the distinct moduli
    flagged: dict[mpz, list[str]]  # modulus -> ids, for the ids with a finding
    keys: int
    distinct_moduli: int


def index_keys(keys: Iterable[Key]) -> dict[mpz, list[str]]:
    """Certificate ids by modulus, in input order.

    The same id twice is refused: it would pass for a duplicate key.
    """
    by_modulus: dict[mpz, list[str]] = {}
    seen: set[str] = set()
    for key_id, modulus in keys:
        if key_id in seen:
            raise ValueError(f"certificate {key_id!r} given twice")
        if modulus < 2:
            raise ValueError(f"certificate {key_id!r}: modulus {modulus} is not an RSA modulus")
        seen.add(key_id)
        by_modulus.setdefault(mpz(modulus), []).append(key_id)
    return by_modulus


def coprime_base(values: Iterable[mpz]) -> list[mpz]:
    """Pairwise coprime numbers > 1 of which every value is a product (of powers).

    Plain refinement: replace any two elements with a common divisor d by d and their cofactors.
    Quadratic, so it only ever sees the gcd values that overlap (see :func:`shared_factor_groups`).
    """
    base: list[mpz] = []
    pending = [mpz(v) for v in values]
    while pending:
        value = pending.pop()
        for index, element in enumerate(base):
            common = gmpy2.gcd(value, element)
            if common != 1:
                base[index] = base[-1]
                base.pop()
                pending.extend(x for x in (common, element // common, value // common) if x != 1)
                break
        else:
            base.append(value)
    return base


def shared_factor_groups(moduli: Sequence[mpz], gcds: Sequence[mpz]) -> list[list[int]]:
    """Indices of distinct moduli with a common factor: one sorted list per factor.

    ``gcds`` are the batch-GCD results. Two moduli share a prime exactly when their gcds do, so
    moduli with the same gcd (in practice: the same shared prime) are a group outright. Only gcds
    that overlap without being equal -- a modulus with both primes shared has itself as gcd --
    need splitting, into a coprime base whose every element makes one group.
    """
    buckets: dict[mpz, list[int]] = {}
    for index, common in enumerate(gcds):
        if common != 1:
            buckets.setdefault(common, []).append(index)
    values = list(buckets)
    overlaps, _ = batch_gcd(values)
    groups = [buckets[v] for v, overlap in zip(values, overlaps) if overlap == 1]
    tangled = [v for v, overlap in zip(values, overlaps) if overlap != 1]
    for element in coprime_base(tangled):
        groups.append(sorted(i for v in tangled if gmpy2.gcd(element, v) != 1 for i in buckets[v]))
    return groups


def _findings(ids_of: list[list[str]], groups: list[list[int]]) -> dict[str, FleetFinding]:
    """Per-id findings from groups of modulus indices, in time linear in the ids listed."""
    group_ids = [sorted(key_id for m in group for key_id in ids_of[m]) for group in groups]
    groups_of: dict[int, list[int]] = {}
    for number, group in enumerate(groups):
        for m in group:
            groups_of.setdefault(m, []).append(number)
    findings: dict[str, FleetFinding] = {}
    for m, ids in enumerate(ids_of):
        mine = groups_of.get(m, [])
        if len(ids) < 2 and not mine:
            continue
        own = set(ids)
        if len(mine) == 1:  # the common case, kept linear for groups of thousands
            count = len(group_ids[mine[0]]) - len(own)
        else:
            others = set().union(*(groups[g] for g in mine)) - {m}
            count = sum(len(ids_of[o]) for o in others)
        merged = (k for k, _ in groupby(merge(*(group_ids[g] for g in mine))) if k not in own)
        shared = tuple(islice(merged, MAX_LISTED))
        ordered = sorted(ids)
        for key_id in ids:
            same = tuple(x for x in islice(ordered, MAX_LISTED + 1) if x != key_id)[:MAX_LISTED]
            findings[key_id] = FleetFinding(shared, count, same, len(ids) - 1)
    return findings


def scan_fleet(keys: Iterable[Key], workers: int = 1) -> FleetScan:
    """Shared primes and duplicate keys across ``keys``, by batch GCD over the distinct moduli.

    ``workers`` is passed to :func:`.trees.batch_gcd`.
    """
    by_modulus = index_keys(keys)
    moduli = list(by_modulus)
    ids_of = list(by_modulus.values())
    gcds, total = batch_gcd(moduli, workers)
    findings = _findings(ids_of, shared_factor_groups(moduli, gcds))
    flagged = {m: ids for m, ids in by_modulus.items() if ids[0] in findings}
    return FleetScan(findings, total, flagged, sum(map(len, ids_of)), len(moduli))
