"""The fleet comparison of an audit, carried from one audit to the next: only what changed is compared.

A full batch GCD over every in-scope RSA modulus costs minutes at a million keys, and between two
audits a fleet changes by a few certificates. So the store keeps (:meth:`Store.save_fleet_state`)
a :class:`.FleetState` -- the product of the fleet's distinct moduli and the keys that have a
finding -- together with the ids of the certificates it holds, its *members*. Each audit:

1. streams the in-scope inventory once: a member is not even parsed; an RSA key that is not a
   member is new; a member not seen left scope (deleted, revoked, made ``INACTIVE``, gone);
2. reads the moduli of the keys that left back from the inventory (it keeps every key forever,
   and a certificate id's key never changes) and divides them out (:meth:`.FleetState.remove`);
3. checks the new keys against the product with one remainder tree (:meth:`.FleetState.add`),
   streaming the members again only when a new key shares a factor with the fleet;
4. reports the findings of the flagged keys re-scanned together, which are exactly those of a
   full recomputation (the property ``tests/test_fleet_audit.py`` checks against moto fleets).

Members are one sorted numpy array of fixed-width ids (64 bytes per AWS IoT certificate id:
64 MB for a million keys, beside the product's 256 MB), looked up by binary search a batch at a
time; there is never a Python set of a million strings. Per audit the extra memory is one flag
byte per member and the new keys.

A state that is missing, damaged (checksums), unreadable, from another inventory (a member the
inventory does not know) or whose counts disagree with its members is not used: the comparison
is recomputed in full, and the phase label says so and why. The incremental path never guesses;
:class:`.FleetState` itself refuses a product that holds a modulus no member has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from devicedefender_audit.detectors.base import DetectorResult
from devicedefender_audit.factoring.fleet_detector import evidence, fleet_results
from devicedefender_audit.factoring.fleet_state import FleetState
from devicedefender_audit.factoring.framing import FleetStateError, frame, read_frame
from devicedefender_audit.factoring.known import KnownMatch, KnownValues, match_known
from devicedefender_audit.factoring.sharing import FleetFinding, Key
from devicedefender_audit.key_material import KeyMaterialError, certificate_public_key, public_key_from_spki
from devicedefender_audit.store.base import InventoryRecord, Store, StoreError

PHASE = "Comparing the fleet's moduli"

#: Seconds per key of a full comparison on one core, for deciding whether a time budget holds
#: one: measured 0.66 ms a key at 100k and 1.03 ms at 1M (README, bench_batch_gcd.py, one process
#: on a busy 2-core machine), rounded up; a budget with less than a core scales it
#: (:attr:`~devicedefender_audit.time_budget.TimeBudget.cpu`).
FULL_SECONDS_PER_KEY = 1.2e-3
MAGIC = b"DDA-FLEET-AUDIT\n"
VERSION = 1

#: What the engine hands over per certificate: the fleet detectors' results and the evidence.
FleetResults = dict[str, tuple[list[DetectorResult], dict[str, str]]]
#: A fresh iteration over the in-scope inventory, in batches (called once per pass).
InScope = Callable[[], Iterable[Sequence[InventoryRecord]]]
#: A comparison's result: the state and members to save, findings, known matches, the summary.
_Outcome = tuple[FleetState, "Members", dict[str, FleetFinding], dict[str, KnownMatch], "FleetComparison"]


def _is_rsa(record: InventoryRecord) -> bool:
    """Whether the record holds an RSA key, or may: a PEM an older parser could not read is read
    here with today's, so its key is compared in this audit, not only in the one after the
    check pass has stored it."""
    description = record.description
    if description is None:
        return False
    if description.spki is None:
        return description.unparsed_pem is not None
    return description.key_algorithm == "RSA"


def rsa_modulus(record: InventoryRecord) -> int | None:
    """The modulus of the record's RSA key; None when it has none or it is unreadable (the
    per-key pass reports those)."""
    if not _is_rsa(record):
        return None
    description = record.description
    try:
        key = (public_key_from_spki(description.spki) if description.spki is not None  # type: ignore[union-attr]
               else certificate_public_key(description.unparsed_pem))  # type: ignore[union-attr, arg-type]
    except KeyMaterialError:
        return None
    return key.modulus if key.is_rsa and key.modulus and key.modulus > 1 else None


class Members:
    """The certificate ids a state holds: sorted, distinct, in one fixed-width bytes array."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    @classmethod
    def of(cls, ids: Iterable[str]) -> Members:
        encoded = [key_id.encode() for key_id in ids]
        return cls(np.unique(np.array(encoded, dtype=bytes)) if encoded else np.array([], dtype="S1"))

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids: Sequence[str]) -> np.ndarray:
        """The index of each id among the members, -1 where it is not one."""
        if not ids or not len(self.ids):
            return np.full(len(ids), -1)
        wanted = np.array([key_id.encode() for key_id in ids], dtype=bytes)
        index = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
        return np.where(self.ids[index] == wanted, index, -1)

    def kept_plus(self, kept: np.ndarray, new: Iterable[str]) -> Members:
        """The members flagged in ``kept`` and the ``new`` ids."""
        added = Members.of(new).ids
        width = max(self.ids.dtype.itemsize, added.dtype.itemsize)
        return Members(np.sort(np.concatenate([self.ids[kept].astype(f"S{width}"), added.astype(f"S{width}")])))

    def names(self, mask: np.ndarray) -> list[str]:
        return [raw.decode() for raw in self.ids[mask].tolist()]


def encode(state: FleetState, members: Members) -> list[bytes]:
    """The saved form: ``MAGIC``, an 8-byte header length, a JSON header, the members, then the
    :class:`.FleetState` file (which carries its own checksums)."""
    blob = members.ids.tobytes()
    header = {
        "version": VERSION,
        "members": len(members),
        "width": members.ids.dtype.itemsize,
        "members_sha256": hashlib.sha256(blob).hexdigest(),
    }
    return [frame(MAGIC, header), blob, *state.to_parts()]


def decode(data: bytes) -> tuple[FleetState, Members]:
    """The state and its members; :class:`.FleetStateError` for anything damaged or inconsistent."""
    header, rest = read_frame(data, MAGIC, "saved fleet state", VERSION)
    try:
        count, width, digest = int(header["members"]), int(header["width"]), str(header["members_sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FleetStateError(f"damaged saved fleet state header: {exc!r}") from exc
    if width < 1 or count < 0:
        raise FleetStateError("damaged saved fleet state header: bad member count or width")
    blob = rest[: count * width]
    if len(blob) != count * width or hashlib.sha256(blob).hexdigest() != digest:
        raise FleetStateError("saved fleet members are truncated or damaged (checksum mismatch)")
    ids = np.frombuffer(blob, dtype=f"S{width}")
    if count > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise FleetStateError("saved fleet members are not sorted and distinct")
    state = FleetState.from_bytes(rest[count * width :])
    if state.keys != count:
        raise FleetStateError(f"the saved product holds {state.keys} keys but names {count} members")
    return state, Members(ids)


@dataclass
class FleetComparison:
    """What one audit's fleet comparison found, and how it got there."""

    results: FleetResults
    incremental: bool
    #: Why the comparison was recomputed in full ("" when incremental).
    rebuilt_because: str
    keys: int
    added: int
    removed: int
    #: Why the state could not be saved ("" when saved or nothing changed).
    not_saved: str = ""
    #: The keys that share a factor with, or equal, a known entry (id, modulus): the only device
    #: keys the CA keys, which are among the known entries, can be broken with.
    known_partners: list[Key] = field(default_factory=list)


class FleetAudit:
    """One audit's comparison of the in-scope RSA keys with each other (and a known list)."""

    def __init__(
        self,
        store: Store,
        in_scope: InScope,
        known: KnownValues | None = None,
        on_phase: Callable[[str], None] | None = None,
        between_batches: Callable[[], None] | None = None,
        before_full: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.in_scope = in_scope
        self.known = known
        self.on_phase = on_phase or (lambda label: None)
        #: Called before each batch is read (the engine raises there when the task is canceled).
        self.between_batches = between_batches or (lambda: None)
        #: Called with the key count before a full comparison, one call that cannot stop midway
        #: (the engine raises there when its time budget cannot hold it).
        self.before_full = before_full or (lambda keys: None)

    def run(self) -> FleetComparison:
        self.on_phase(PHASE)
        saved, why = self._load()
        outcome: _Outcome | None = None
        if saved is not None:
            try:
                outcome = self._incremental(*saved)
            except (FleetStateError, ValueError) as exc:
                why = f"the saved state disagrees with the inventory ({exc})"
        if outcome is None:
            self.on_phase(f"{PHASE} in full ({why})")
            outcome = self._full(why)
        state, members, findings, matches, comparison = outcome
        comparison.results = {
            key_id: (fleet_results(findings.get(key_id), matches.get(key_id)),
                     evidence(findings.get(key_id), matches.get(key_id)))
            for key_id in findings.keys() | matches.keys()
        }
        comparison.known_partners = [(key_id, int(matches[key_id].modulus)) for key_id in sorted(matches)]
        if not comparison.incremental or comparison.added or comparison.removed:
            try:
                self.store.save_fleet_state(encode(state, members))
            except StoreError as exc:
                comparison.not_saved = str(exc)
                self.on_phase(f"{PHASE}: done, but the state was not saved ({exc}); the next audit compares all")
        return comparison

    def _load(self) -> tuple[tuple[FleetState, Members] | None, str]:
        try:
            data = self.store.load_fleet_state()
        except StoreError as exc:
            return None, f"the saved state is unreadable: {exc}"
        if data is None:
            return None, "no saved state"
        try:
            return decode(data), ""
        except FleetStateError as exc:
            return None, f"the saved state is unusable: {exc}"

    def _batches(self) -> Iterator[Sequence[InventoryRecord]]:
        for records in self.in_scope():
            self.between_batches()
            yield records

    def _keys(self, members: Members | None = None) -> Iterator[Key]:
        """(id, modulus) of the in-scope RSA keys; only the members' if ``members`` is given."""
        for records in self._batches():
            rsa = [record for record in records if _is_rsa(record)]
            if members is not None:
                where = members.find([record.certificate_id for record in rsa])
                rsa = [record for record, index in zip(rsa, where) if index >= 0]
            for record in rsa:
                modulus = rsa_modulus(record)
                if modulus is not None:
                    yield record.certificate_id, modulus

    def _matches(self, state: FleetState, keys: Iterable[Key]) -> dict[str, KnownMatch]:
        return match_known(keys, self.known, state.product) if self.known else {}

    def _full(self, why: str) -> _Outcome:
        keys = list(self._keys())
        self.before_full(len(keys))
        state, findings = FleetState.build(keys)
        members = Members.of(key_id for key_id, _ in keys)
        comparison = FleetComparison({}, False, why, len(keys), len(keys), 0)
        return state, members, findings, self._matches(state, keys), comparison

    def _incremental(self, state: FleetState, members: Members) -> _Outcome:
        seen = np.zeros(len(members), dtype=bool)
        new: list[Key] = []
        for records in self._batches():
            rsa = [record for record in records if _is_rsa(record)]
            for record, index in zip(rsa, members.find([record.certificate_id for record in rsa])):
                if index >= 0:
                    seen[index] = True
                elif (modulus := rsa_modulus(record)) is not None:
                    new.append((record.certificate_id, modulus))
        gone = members.names(~seen)
        self.on_phase(f"{PHASE}: {len(new):,} new and {len(gone):,} gone since the saved state "
                      f"of {len(members):,} keys")
        if gone:
            state.remove(self._stored_key(key_id) for key_id in gone)
        if new:
            state.add(new, existing=self._keys(members))
        updated = members.kept_plus(seen, (key_id for key_id, _ in new))
        if state.keys != len(updated):
            raise FleetStateError(f"the product holds {state.keys} keys, the inventory {len(updated)}")
        comparison = FleetComparison({}, True, "", len(updated), len(new), len(gone))
        return state, updated, state.findings(), self._matches(state, self._keys()), comparison

    def _stored_key(self, certificate_id: str) -> Key:
        """A key that left scope, read back from the inventory, which keeps it."""
        record = self.store.inventory_record(certificate_id)
        modulus = rsa_modulus(record) if record is not None else None
        if modulus is None:
            raise FleetStateError(f"member {certificate_id} has no RSA key in this inventory")
        return certificate_id, modulus


def compare_fleet(
    store: Store,
    in_scope: InScope,
    known: KnownValues | None = None,
    on_phase: Callable[[str], None] | None = None,
    between_batches: Callable[[], None] | None = None,
    before_full: Callable[[int], None] | None = None,
) -> FleetComparison:
    """The fleet results of this audit (see the module doc); the state is saved for the next."""
    return FleetAudit(store, in_scope, known, on_phase, between_batches, before_full).run()
