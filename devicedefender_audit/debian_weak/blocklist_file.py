"""The on-disk blocklist: a sorted binary table plus a JSON manifest.

``rsa-<bits>.ddwk`` layout (little endian), chosen so lookups can memory-map it and binary
search without parsing:

* header, 32 bytes: magic ``DDWEAK01``, uint32 format version, uint32 key bits,
  uint64 entry count, 8 bytes zero;
* ``count`` uint64: high 64 bits of each fingerprint, sorted ascending;
* ``count`` uint16: the remaining 16 bits, same order;
* ``count`` uint32: packed :class:`~.fingerprint.Origin`, same order.

``rsa-<bits>.json`` (the manifest) states bits, coverage, count, format version and the
sha256 of the binary file, so a reader can tell what is covered and that the file is intact.

EC tables use the same layout under another ``name`` (``ec-p256``), with the curve's key size
as the header's key bits and an EC point fingerprint (see :mod:`.ec_curves`).

Lookups need no numpy: the table is memory-mapped and binary-searched through a ``memoryview``,
so ``check`` does not pay numpy's import (tens of ms). Writing a list and bulk access to whole
columns (export, merging) use numpy, imported there.

Integrity: :meth:`BlocklistTable.open` checks that the file is the one its manifest describes
(key bits, format version, entry count, size); the manifest's sha256 is checked the first time
the rows are used, so checking one key hashes only the list for that key's size. Any mismatch
raises :class:`BlocklistError`: a damaged list must fail loudly, never answer CLEAN.
"""

from __future__ import annotations

import array
import hashlib
import json
import mmap
import os
import struct
import sys
from bisect import bisect_left
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"DDWEAK01"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
#: Bytes per entry over the three columns: uint64 + uint16 + uint32.
ENTRY_SIZE = 14
#: Leading fingerprint bits that pick a bucket of the index :meth:`BlocklistTable.find` starts
#: from: 1024 bisections when a list is first used (well under 1 ms) save about ten probes a lookup.
BUCKET_BITS = 10


class BlocklistError(ValueError):
    """A blocklist file is missing, truncated, corrupt or of an unknown format."""


@cache
def _record_dtype() -> np.dtype:
    import numpy as np

    return np.dtype([("hi", "<u8"), ("lo", "<u2"), ("origin", "<u4")])


def __getattr__(name: str) -> Any:
    """``RECORD``, the numpy dtype of one entry, is made on first use so that reading lists
    never imports numpy."""
    if name == "RECORD":
        return _record_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def table_name(bits: int, name: str | None = None) -> str:
    """File stem of a table: ``rsa-<bits>`` unless another ``name`` (``ec-p256``) is given."""
    return name or f"rsa-{bits}"


def data_path(directory: Path, bits: int, name: str | None = None) -> Path:
    return directory / f"{table_name(bits, name)}.ddwk"


def manifest_path(directory: Path, bits: int, name: str | None = None) -> Path:
    return directory / f"{table_name(bits, name)}.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def absent_from(candidates: np.ndarray, records: np.ndarray) -> np.ndarray:
    """The ``candidates`` (dtype :data:`RECORD`) whose fingerprint ``records`` lack: merging an
    import or keeping one across a rebuild adds each key once."""
    import numpy as np

    known = set(zip(records["hi"].tolist(), records["lo"].tolist(), strict=True))
    return np.array([r for r in candidates if (int(r["hi"]), int(r["lo"])) not in known], dtype=_record_dtype())


def write_blocklist(
    directory: Path, bits: int, records: np.ndarray, manifest: dict[str, Any], name: str | None = None
) -> dict[str, Any]:
    """Sort ``records`` (dtype :data:`RECORD`), write the table and its manifest atomically,
    and return the manifest as written."""
    import numpy as np

    records = np.sort(records, order=("hi", "lo", "origin"))
    path = data_path(directory, bits, name)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        handle.write(HEADER.pack(MAGIC, FORMAT_VERSION, bits, len(records)))
        handle.write(records["hi"].astype("<u8").tobytes())
        handle.write(records["lo"].astype("<u2").tobytes())
        handle.write(records["origin"].astype("<u4").tobytes())
    os.replace(tmp, path)
    full = dict(manifest, bits=bits, count=len(records), format_version=FORMAT_VERSION,
                sha256=sha256_file(path), data_file=path.name)
    mtmp = manifest_path(directory, bits, name).with_suffix(".tmp")
    mtmp.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    os.replace(mtmp, manifest_path(directory, bits, name))
    return full


def _column(mapping: mmap.mmap, offset: int, count: int, code: str) -> Sequence[int]:
    """``count`` little-endian integers of array type ``code`` at ``offset``: a zero-copy view
    where the host is little endian, a byte-swapped copy elsewhere."""
    size = array.array(code).itemsize
    view = memoryview(mapping)[offset : offset + count * size]
    if sys.byteorder == "little":
        return view.cast(code)
    column = array.array(code, view)
    column.byteswap()
    return column


def _read_manifest(path: Path, bits: int) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BlocklistError(f"cannot read blocklist manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BlocklistError(f"{path} is not a blocklist manifest")
    expected = {"bits": bits, "format_version": FORMAT_VERSION}
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise BlocklistError(f"{path} says {key} {manifest.get(key)!r}, expected {value!r}")
    if not isinstance(manifest.get("count"), int) or not isinstance(manifest.get("sha256"), str):
        raise BlocklistError(f"{path} lacks the entry count or sha256 of its list")
    return manifest


class BlocklistTable:
    """One table, memory-mapped; its rows are used only once its sha256 matched the manifest."""

    def __init__(self, path: Path, bits: int, manifest: dict[str, Any], mapping: mmap.mmap) -> None:
        self.path = path
        self.bits = bits
        self.manifest = manifest
        self.count: int = manifest["count"]
        self._mapping = mapping
        self._columns: tuple[Sequence[int], Sequence[int], Sequence[int], list[int]] | None = None

    @classmethod
    def open(cls, directory: Path, bits: int, verify: bool = False, name: str | None = None) -> BlocklistTable:
        """Map the table and check it against its manifest; the sha256 too when ``verify``,
        else on first use (see :meth:`verify`). Raises :class:`BlocklistError` for any mismatch."""
        path = data_path(directory, bits, name)
        manifest = _read_manifest(manifest_path(directory, bits, name), bits)
        try:
            with path.open("rb") as handle:
                mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise BlocklistError(f"cannot read blocklist {path}: {exc}") from exc
        count = manifest["count"]
        if len(mapping) != HEADER.size + count * ENTRY_SIZE:
            raise BlocklistError(
                f"{path} is {len(mapping)} bytes; its manifest's {count} entries need "
                f"{HEADER.size + count * ENTRY_SIZE} (truncated or from another build)"
            )
        magic, version, file_bits, file_count = HEADER.unpack_from(mapping)
        if (magic, version, file_bits, file_count) != (MAGIC, FORMAT_VERSION, bits, count):
            raise BlocklistError(
                f"{path} is not the version {FORMAT_VERSION} {table_name(bits, name)} blocklist "
                f"of {count} entries its manifest describes"
            )
        table = cls(path, bits, manifest, mapping)
        if verify:
            table.verify()
        return table

    def verify(self) -> None:
        """Check the file against the sha256 in its manifest (about 0.6 ms per MB here), once."""
        self._rows()

    def _rows(self) -> tuple[Sequence[int], Sequence[int], Sequence[int], list[int]]:
        """The columns as sequences of ints for :meth:`find`, after the sha256 check, and where
        each bucket of fingerprints starts (plus the end)."""
        if self._columns is None:
            if hashlib.sha256(self._mapping).hexdigest() != self.manifest["sha256"]:
                raise BlocklistError(
                    f"{self.path} does not match the sha256 in its manifest: the list is corrupt or "
                    "was changed after it was built; restore or rebuild it"
                )
            offsets = self._offsets()
            his = _column(self._mapping, offsets["hi"], self.count, "Q")
            bounds = [bisect_left(his, bucket << (64 - BUCKET_BITS)) for bucket in range(1 << BUCKET_BITS)]
            self._columns = (
                his,
                _column(self._mapping, offsets["lo"], self.count, "H"),
                _column(self._mapping, offsets["origin"], self.count, "I"),
                [*bounds, self.count],
            )
        return self._columns

    def _offsets(self) -> dict[str, int]:
        lo_at = HEADER.size + 8 * self.count
        return {"hi": HEADER.size, "lo": lo_at, "origin": lo_at + 2 * self.count}

    def __len__(self) -> int:
        return self.count

    def find(self, hi: int, lo: int) -> list[int]:
        """Packed origins of every entry with this fingerprint (empty when absent)."""
        his, los, origins, bounds = self._columns or self._rows()
        bucket = hi >> (64 - BUCKET_BITS)
        index = bisect_left(his, hi, bounds[bucket], bounds[bucket + 1])
        found = []
        while index < self.count and his[index] == hi:
            if los[index] == lo:
                found.append(origins[index])
            index += 1
        return found

    def array(self, field: str) -> np.ndarray:
        """One column (``hi``, ``lo`` or ``origin``) as a read-only numpy view, for bulk work
        (export, merging, tests); lookups use :meth:`find`."""
        import numpy as np

        self.verify()
        return np.frombuffer(self._mapping, dtype=_record_dtype()[field], count=self.count,
                             offset=self._offsets()[field])

    @property
    def hi(self) -> np.ndarray:
        """High 64 bits of each fingerprint, ascending."""
        return self.array("hi")

    @property
    def lo(self) -> np.ndarray:
        """Low 16 bits of each fingerprint."""
        return self.array("lo")

    @property
    def origin(self) -> np.ndarray:
        """Packed :class:`~.fingerprint.Origin` of each entry."""
        return self.array("origin")

    def records(self) -> np.ndarray:
        """Every entry as a :data:`RECORD` array (for merging into a new list)."""
        import numpy as np

        out = np.empty(self.count, dtype=_record_dtype())
        for field in ("hi", "lo", "origin"):
            out[field] = self.array(field)
        return out


def open_ec_tables(directory: Path) -> dict[str, BlocklistTable]:
    """The ``ec-p<bits>`` lists in ``directory`` by file stem (``ec-p256``), opened and checked as
    the RSA ones are (:func:`available_sizes`, :meth:`BlocklistTable.open`): a data file without
    its manifest, a manifest without its data, or a size that does not match raises
    :class:`BlocklistError`. Cheap (no EC code is imported, nothing is hashed), so it runs at
    start: a damaged EC list must fail an RSA-only run too, not wait for the first EC key."""
    manifests = {path.stem for path in directory.glob("ec-p*.json")}
    orphans = sorted({path.stem for path in directory.glob("ec-p*.ddwk")} - manifests)
    if orphans:
        raise BlocklistError(f"{directory} has blocklist data without a manifest: {', '.join(orphans)}")
    return {stem: BlocklistTable.open(directory, int(stem.removeprefix("ec-p")), name=stem)
            for stem in sorted(manifests) if stem.removeprefix("ec-p").isdigit()}


def available_sizes(directory: Path) -> list[int]:
    """Key sizes of the ``rsa-<bits>`` lists in ``directory``. A data file without its manifest
    is an error: its keys would otherwise be silently reported as not covered."""
    manifests = {path.stem for path in directory.glob("rsa-*.json")}
    orphans = sorted({path.stem for path in directory.glob("rsa-*.ddwk")} - manifests)
    if orphans:
        raise BlocklistError(f"{directory} has blocklist data without a manifest: {', '.join(orphans)}")
    sizes = []
    for stem in manifests:
        try:
            sizes.append(int(stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(sizes)
