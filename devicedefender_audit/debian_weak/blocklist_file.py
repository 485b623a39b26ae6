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
as the header's key bits and an EC point fingerprint (see :mod:`.ec_keygen`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"DDWEAK01"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
RECORD = np.dtype([("hi", "<u8"), ("lo", "<u2"), ("origin", "<u4")])


class BlocklistError(ValueError):
    """A blocklist file is missing, truncated, corrupt or of an unknown format."""


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


def write_blocklist(
    directory: Path, bits: int, records: np.ndarray, manifest: dict[str, Any], name: str | None = None
) -> dict[str, Any]:
    """Sort ``records`` (dtype :data:`RECORD`), write the table and its manifest atomically,
    and return the manifest as written."""
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


@dataclass
class BlocklistTable:
    """One key size's table, memory-mapped; columns are views into the mapping."""

    bits: int
    hi: np.ndarray
    lo: np.ndarray
    origin: np.ndarray
    manifest: dict[str, Any]

    @classmethod
    def open(cls, directory: Path, bits: int, verify: bool = False, name: str | None = None) -> BlocklistTable:
        path = data_path(directory, bits, name)
        mpath = manifest_path(directory, bits, name)
        try:
            manifest = json.loads(mpath.read_text())
            raw = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise BlocklistError(f"cannot read blocklist {table_name(bits, name)} in {directory}: {exc}") from exc
        if len(raw) < HEADER.size:
            raise BlocklistError(f"{path} is truncated")
        magic, version, file_bits, count = HEADER.unpack(bytes(raw[: HEADER.size]))
        if magic != MAGIC or version != FORMAT_VERSION or file_bits != bits:
            raise BlocklistError(f"{path} is not a version {FORMAT_VERSION} {table_name(bits, name)} blocklist")
        if len(raw) != HEADER.size + count * RECORD.itemsize:
            raise BlocklistError(f"{path} size does not match its header ({count} entries)")
        if verify and sha256_file(path) != manifest.get("sha256"):
            raise BlocklistError(f"{path} does not match the sha256 in {mpath.name}")
        off = HEADER.size
        hi = raw[off : off + 8 * count].view("<u8")
        off += 8 * count
        lo = raw[off : off + 2 * count].view("<u2")
        off += 2 * count
        origin = raw[off : off + 4 * count].view("<u4")
        return cls(bits=bits, hi=hi, lo=lo, origin=origin, manifest=manifest)

    def __len__(self) -> int:
        return len(self.hi)

    def find(self, hi: int, lo: int) -> list[int]:
        """Packed origins of every entry with this fingerprint (empty when absent)."""
        left = int(np.searchsorted(self.hi, np.uint64(hi), side="left"))
        right = int(np.searchsorted(self.hi, np.uint64(hi), side="right"))
        return [int(self.origin[i]) for i in range(left, right) if int(self.lo[i]) == lo]

    def records(self) -> np.ndarray:
        out = np.empty(len(self), dtype=RECORD)
        out["hi"], out["lo"], out["origin"] = self.hi, self.lo, self.origin
        return out


def available_sizes(directory: Path) -> list[int]:
    """Key sizes that have a manifest in ``directory``."""
    sizes = []
    for path in directory.glob("rsa-*.json"):
        try:
            sizes.append(int(path.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(sizes)
