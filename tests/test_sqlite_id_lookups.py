"""The SQLite store's lookups by certificate id (``ids_without_description``, ``verdicts``).

The inventory hands them a whole listing page, and moto lists a whole fleet as one page: a lookup
prepared with one parameter per id stayed in sqlite3's statement cache, with its bound ids, for as
long as the store was open (~0.23 KB of SQLite heap per certificate, the native growth seen in
long scans over moto fleets). They are now asked in fixed-size chunks: the same answers, for any
number of ids, in bounded memory.
"""

from __future__ import annotations

import _sqlite3
import ctypes

import pytest

from devicedefender_audit.aws.iot_certificates import ListedCertificate
from devicedefender_audit.store.base import Description, StoredVerdict
from devicedefender_audit.store.sqlite import ID_CHUNK, SqliteStore


def _ids(count: int, prefix: str = "a") -> list[str]:
    return [f"{prefix}{i:063x}" for i in range(count)]


def _store(tmp_path, ids: list[str]) -> SqliteStore:
    store = SqliteStore(tmp_path / "audits.sqlite3")
    with store.batch():
        store.record_listing([ListedCertificate(cid, f"arn:aws:iot:us-east-1:123456789012:cert/{cid}", "ACTIVE", None)
                              for cid in ids], 1.0)
    return store


def test_lookups_over_many_chunks_answer_as_one_query(tmp_path):
    ids = _ids(2 * ID_CHUNK + 3)
    store = _store(tmp_path, ids)
    try:
        described = ids[::3]
        store.save_descriptions([Description(cid, spki=b"k", key_algorithm="RSA", key_bits=2048) for cid in described])
        store.save_verdicts([StoredVerdict(cid, detector, "1", "CLEAN", None, "{}")
                             for cid in ids[::2] for detector in ("roca", "debian")])
        unknown = _ids(5, "b")
        asked = [*reversed(ids), *ids[:ID_CHUNK + 1], *unknown]  # duplicates across chunks, ids never listed

        assert store.ids_without_description(asked) == set(ids) - set(described) | set(unknown)
        verdicts = store.verdicts(asked)
        assert set(verdicts) == set(ids[::2])
        assert all(sorted(v.detector for v in found) == ["debian", "roca"] for found in verdicts.values())
        assert store.ids_without_description([]) == set() and store.verdicts([]) == {}
        assert store.ids_without_description(unknown[:1]) == set(unknown[:1])
    finally:
        store.close()


def _sqlite_heap() -> int:
    used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return used()


def test_a_lookup_of_a_whole_fleet_leaves_no_statement_sized_by_the_fleet(tmp_path):
    fleet = _ids(20_000)
    store = _store(tmp_path, fleet)
    try:
        for _ in store.in_scope(0.0, ["ACTIVE"], 1000):
            pass  # SQLite's page cache filled to its bound first: what remains is the statements'
        before = _sqlite_heap()
        if before == 0:
            pytest.skip("this SQLite keeps no memory statistics")
        assert len(store.ids_without_description(fleet)) == len(fleet)
        assert store.verdicts(fleet) == {}
        grown = _sqlite_heap() - before
        # One statement per fleet-sized lookup held ~4.5 MiB here (0.23 KB a certificate, twice).
        assert grown < 1 << 20, f"SQLite heap grew {grown / 2**20:.1f} MiB over 20,000 ids"
    finally:
        store.close()
