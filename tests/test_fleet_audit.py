"""The factorable check's fleet comparison carried between audits (factoring/fleet_audit.py).

The property: whatever happened to the fleet between audits (certificates added, made INACTIVE,
revoked, deleted, reactivated), the incremental comparison reports exactly what a full
recomputation in a fresh store reports. A state that is missing, damaged, unreadable or from
another inventory is recomputed in full, said so in the phase label, never a wrong result.
"""

from __future__ import annotations

import random
import stat
from pathlib import Path

import gmpy2
import numpy as np
import pytest
from test_factorable_audit import key, prime

from devicedefender_audit.audit import Audit
from devicedefender_audit.checks import factorable_check
from devicedefender_audit.demo import issue_certificate
from devicedefender_audit.factoring import fleet_audit
from devicedefender_audit.factoring.codes import DUPLICATE_KEY, SHARED_PRIME
from devicedefender_audit.factoring.fleet_audit import Members, decode, encode
from devicedefender_audit.factoring.fleet_state import FleetState, FleetStateError
from devicedefender_audit.factoring.known import KnownValues
from devicedefender_audit.models import AuditTaskStatus
from devicedefender_audit.store import open_store
from devicedefender_audit.store.sqlite import FLEET_STATE_SUFFIX

FLEET_CODES = (SHARED_PRIME, DUPLICATE_KEY)


#: 1024-bit primes, made once per test process (~25 ms each) and drawn in order by every fleet:
#: distinct within a fleet, and each test's moto account is a fresh one.
_PRIMES: list[int] = []
_RNG = random.Random(2012)


class Fleet:
    """A moto account's certificates, registered from chosen primes."""

    def __init__(self, iot) -> None:
        self.iot = iot
        self.drawn = 0
        self.ids: dict[str, str] = {}
        self.primes: dict[str, tuple[int, int]] = {}

    def prime(self) -> int:
        while len(_PRIMES) <= self.drawn:
            _PRIMES.append(prime(_RNG))
        self.drawn += 1
        return _PRIMES[self.drawn - 1]

    def add(self, name: str, p: int | None = None, q: int | None = None) -> str:
        p, q = p or self.prime(), q or self.prime()
        pem = issue_certificate(key(p, q), name)
        self.ids[name] = self.iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")["certificateId"]
        self.primes[name] = (p, q)
        return self.ids[name]

    def status(self, name: str, status: str) -> None:
        self.iot.update_certificate(certificateId=self.ids[name], newStatus=status)

    def delete(self, name: str) -> None:
        self.status(name, "INACTIVE")
        self.iot.delete_certificate(certificateId=self.ids[name])


def audit(iot, store, known: KnownValues | None = None) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """The fleet findings (shared primes, duplicates) of one audit, with its phase labels."""
    phases: list[str] = []
    task = Audit(iot, store, [], checks=[factorable_check(known)],
                 on_phase=lambda label, total: phases.append(label)).run()
    assert task.task_status is AuditTaskStatus.COMPLETED
    findings = {
        (f.certificate_id, f.reason_for_non_compliance_code): f.non_compliant_resource.additional_info
        for f in store.findings(task.task_id)
        if f.reason_for_non_compliance_code in FLEET_CODES
    }
    return findings, phases


def full_recomputation(iot, tmp_path: Path, known: KnownValues | None = None) -> dict[tuple[str, str], dict]:
    """What a fresh store, with no saved state, reports for the account as it is now."""
    folder = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
    folder.mkdir()
    store = open_store(folder / "audits.sqlite3")
    findings, phases = audit(iot, store, known)
    assert any("in full (no saved state)" in label for label in phases)
    store.close()
    return findings


def phase_of(phases: list[str]) -> str:
    return next(label for label in reversed(phases) if label.startswith(fleet_audit.PHASE))


@pytest.fixture
def planted(iot) -> Fleet:
    fleet = Fleet(iot)
    shared, triple = fleet.prime(), fleet.prime()
    fleet.add("pair-a", shared)
    fleet.add("pair-b", shared)
    for name in ("tri-a", "tri-b", "tri-c"):
        fleet.add(name, triple)
    fleet.add("dup-a")
    fleet.add("dup-b", *fleet.primes["dup-a"])
    for i in range(8):
        fleet.add(f"good-{i}")
    return fleet


def test_incremental_audits_equal_a_full_recomputation(iot, planted, tmp_path, monkeypatch):
    store = open_store(tmp_path / "audits.sqlite3")
    first, phases = audit(iot, store)
    assert phase_of(phases).endswith("in full (no saved state)")
    assert first == full_recomputation(iot, tmp_path)
    assert {cid for cid, _ in first} == {planted.ids[n] for n in ("pair-a", "pair-b", "tri-a", "tri-b", "tri-c",
                                                                  "dup-a", "dup-b")}
    sidecar = Path(store.path + FLEET_STATE_SUFFIX)
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600

    # Unchanged: no key is parsed again, nothing is rewritten.
    parsed = []
    real_modulus = fleet_audit.rsa_modulus
    monkeypatch.setattr(fleet_audit, "rsa_modulus", lambda record: parsed.append(record) or real_modulus(record))
    written = sidecar.stat().st_mtime_ns
    again, phases = audit(iot, store)
    assert again == first and parsed == []
    assert "0 new and 0 gone" in phase_of(phases) and sidecar.stat().st_mtime_ns == written

    # New keys sharing nothing: only they are parsed (the fleet is read again only on a hit).
    for i in range(2):
        planted.add(f"new-good-{i}")
    grown, phases = audit(iot, store)
    assert grown == first and len(parsed) == 2 and "2 new and 0 gone" in phase_of(phases)

    # Added, deactivated, revoked, deleted.
    planted.add("joins-pair", planted.primes["pair-a"][0])
    planted.add("pairs-good", planted.primes["good-0"][1])
    planted.add("dup-of-tri", *planted.primes["tri-a"])
    planted.add("new-good-2")
    planted.status("tri-b", "INACTIVE")
    planted.status("dup-b", "REVOKED")
    planted.delete("pair-b")
    later, phases = audit(iot, store)
    assert "4 new and 3 gone" in phase_of(phases)
    assert later == full_recomputation(iot, tmp_path)
    assert (planted.ids["good-0"], SHARED_PRIME) in later and (planted.ids["dup-a"], DUPLICATE_KEY) not in later
    assert later[(planted.ids["pair-a"], SHARED_PRIME)]["sharedPrimeWith"] == planted.ids["joins-pair"]

    # Back in scope, and a whole group gone.
    planted.status("tri-b", "ACTIVE")
    for name in ("pair-a", "joins-pair"):
        planted.delete(name)
    last, phases = audit(iot, store)
    assert "1 new and 2 gone" in phase_of(phases)
    assert last == full_recomputation(iot, tmp_path)
    assert not any(cid in (planted.ids["pair-a"], planted.ids["joins-pair"]) for cid, _ in last)


def test_known_moduli_are_matched_on_the_incremental_path(iot, tmp_path):
    fleet = Fleet(iot)
    leaked = fleet.prime()
    fleet.add("good")
    known = KnownValues.parse(f"{leaked}\n", "known.txt")
    store = open_store(tmp_path / "audits.sqlite3")
    assert audit(iot, store, known)[0] == {}
    fleet.add("weak", leaked)
    fleet.add("other")
    findings, phases = audit(iot, store, known)
    assert "2 new and 0 gone" in phase_of(phases)
    assert findings == full_recomputation(iot, tmp_path, known)
    assert findings[(fleet.ids["weak"], SHARED_PRIME)]["knownSharedPrime"] == "known.txt:1"


def damage_flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]


@pytest.mark.parametrize("damage", [damage_flip, lambda data: data[: len(data) - 7], lambda data: b"junk"],
                         ids=["flipped", "truncated", "not-a-state"])
def test_a_damaged_state_is_recomputed_in_full(iot, planted, tmp_path, damage):
    store = open_store(tmp_path / "audits.sqlite3")
    expected, _ = audit(iot, store)
    sidecar = Path(store.path + FLEET_STATE_SUFFIX)
    sidecar.write_bytes(damage(sidecar.read_bytes()))
    planted.add("late")
    findings, phases = audit(iot, store)
    assert "in full (the saved state is unusable" in phase_of(phases)
    assert findings == expected
    decode(sidecar.read_bytes())  # saved whole again


def test_a_state_from_another_inventory_is_recomputed_in_full(iot, planted, tmp_path):
    store = open_store(tmp_path / "audits.sqlite3")
    expected, _ = audit(iot, store)
    state, members = decode(store.load_fleet_state())
    stranger = ("f" * 64, int(gmpy2.next_prime(2**1023)) * int(gmpy2.next_prime(2**1022)))
    state.add([stranger], existing=())
    store.save_fleet_state(encode(state, members.kept_plus(np.ones(len(members), dtype=bool), [stranger[0]])))
    findings, phases = audit(iot, store)
    assert "in full (the saved state disagrees with the inventory" in phase_of(phases)
    assert findings == expected


def test_a_product_holding_a_modulus_no_member_has_is_caught_when_it_matters(iot, planted, tmp_path):
    """A product with a foreign modulus under a member's name is harmless until a new key shares
    a prime with that modulus: then the partner search finds no member that explains it."""
    store = open_store(tmp_path / "audits.sqlite3")
    audit(iot, store)
    _, members = decode(store.load_fleet_state())
    good = planted.ids["good-0"]
    foreign = planted.prime()
    keys = [(planted.ids[name], p * q) for name, (p, q) in planted.primes.items()]
    keys = [(cid, foreign * planted.prime() if cid == good else n) for cid, n in keys]
    store.save_fleet_state(encode(FleetState.build(keys)[0], members))
    planted.add("shares-with-nothing", foreign)
    findings, phases = audit(iot, store)
    assert "in full (the saved state disagrees with the inventory" in phase_of(phases)
    assert findings == full_recomputation(iot, tmp_path)
    assert (planted.ids["shares-with-nothing"], SHARED_PRIME) not in findings


def test_an_unusable_sidecar_is_reported_and_the_audit_completes(iot, planted, tmp_path):
    store = open_store(tmp_path / "audits.sqlite3")
    Path(store.path + FLEET_STATE_SUFFIX).mkdir()  # neither readable as a file nor replaceable
    findings, phases = audit(iot, store)
    assert any("in full (the saved state is unreadable" in label for label in phases)
    assert any("the state was not saved" in label for label in phases)
    assert findings == full_recomputation(iot, tmp_path)
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_in_memory_store_keeps_the_state_in_memory(iot, planted):
    store = open_store(":memory:")
    first, phases = audit(iot, store)
    assert phase_of(phases).endswith("in full (no saved state)")
    planted.add("late", planted.primes["good-1"][0])
    findings, phases = audit(iot, store)
    assert "1 new and 0 gone" in phase_of(phases)
    assert set(findings) == set(first) | {(planted.ids["late"], SHARED_PRIME), (planted.ids["good-1"], SHARED_PRIME)}


def test_dynamodb_compares_the_fleet_in_full_each_audit(iot, planted):
    store = open_store("dynamodb://dda-fleet")
    first, phases = audit(iot, store)
    again, phases_again = audit(iot, store)
    assert first == again and len(first) == 7
    assert phase_of(phases).endswith("in full (no saved state)") and phase_of(phases_again) == phase_of(phases)


# the saved form --------------------------------------------------------------------------------


def test_members_are_found_whatever_the_id_width():
    members = Members.of(["b" * 64, "a" * 64, "c" * 64])
    assert members.find(["a" * 64, "x" * 70, "c" * 64, "a", "d" * 64]).tolist() == [0, -1, 2, -1, -1]
    grown = members.kept_plus(np.array([True, False, True]), ["z" * 70, "0"])
    assert grown.names(np.ones(len(grown), dtype=bool)) == ["0", "a" * 64, "c" * 64, "z" * 70]
    assert Members.of([]).find(["a"]).tolist() == [-1] and len(Members.of([])) == 0


def test_saved_form_round_trips_and_refuses_damage():
    keys = [(f"{i:064x}", int(gmpy2.next_prime(2**512 + 1000 * i)) * int(gmpy2.next_prime(2**511 + 77 * i)))
            for i in range(1, 20)]
    state, _ = FleetState.build(keys)
    data = b"".join(encode(state, Members.of(cid for cid, _ in keys)))
    loaded, members = decode(data)
    assert loaded.product == state.product and len(members) == 19
    header_end = data.index(b"}") + 1
    damaged = {
        "magic": b"X" + data[1:],
        "header": data[:30] + b"{" + data[31:],
        "members": data[: header_end + 5] + b"!" + data[header_end + 6 :],
        "product": data[:-3] + b"!!!",
        "short": data[: header_end + 10],
    }
    for name, blob in damaged.items():
        with pytest.raises(FleetStateError):
            decode(blob)
            pytest.fail(f"{name} damage was not refused")
    too_few = b"".join(encode(state, Members.of(cid for cid, _ in keys[:-1])))
    with pytest.raises(FleetStateError, match="names 18 members"):
        decode(too_few)


def test_sqlite_sidecar_replaces_atomically_and_privately(tmp_path):
    store = open_store(tmp_path / "audits.sqlite3")
    store.save_fleet_state([b"one"])
    store.save_fleet_state([b"two", b"!"])
    sidecar = tmp_path / ("audits.sqlite3" + FLEET_STATE_SUFFIX)
    assert sidecar.read_bytes() == b"two!" and stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if "fleet" in p.name) == [sidecar.name]
