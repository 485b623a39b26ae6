"""Import and export Debian's ``openssl-vulnkey`` list format (``blacklist.RSA-NNNN``).

Each line is 20 hex digits, the last 80 bits of ``SHA1("Modulus=<HEX>\\n")``; ``#`` starts a
comment. Imported entries carry no provenance, so they are stored with ``UNKNOWN_ORIGIN``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from devicedefender_audit.debian_weak.blocklist_file import (
    RECORD,
    BlocklistError,
    BlocklistTable,
    absent_from,
    data_path,
    write_blocklist,
)
from devicedefender_audit.debian_weak.fingerprint import UNKNOWN_ORIGIN

_LINE = re.compile(r"^[0-9a-fA-F]{20}$")


def read_vulnkey_list(path: Path) -> np.ndarray:
    """Records for every fingerprint in an openssl-vulnkey list; rejects malformed lines."""
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _LINE.match(line):
            raise BlocklistError(f"{path}:{number}: expected 20 hex digits, found {line[:40]!r}")
        value = bytes.fromhex(line)
        entries.append((int.from_bytes(value[:8], "big"), int.from_bytes(value[8:], "big"), UNKNOWN_ORIGIN))
    return np.array(entries, dtype=RECORD)


def import_vulnkey_list(blocklists: Path, bits: int, path: Path) -> int:
    """Merge a list into the table for ``bits``; return how many new fingerprints it added."""
    imported = read_vulnkey_list(path)
    manifest: dict = {"complete": False, "keys_generated": 0, "pid_ranges": {}}
    existing = np.empty(0, dtype=RECORD)
    if data_path(blocklists, bits).exists():
        table = BlocklistTable.open(blocklists, bits)
        existing, manifest = table.records(), dict(table.manifest)
    fresh = absent_from(imported, existing)
    manifest.setdefault("imported", []).append({"file": path.name, "added": len(fresh)})
    write_blocklist(blocklists, bits, np.concatenate([existing, fresh]), manifest)
    return len(fresh)


def export_vulnkey_list(blocklists: Path, bits: int, out: Path) -> int:
    """Write the table for ``bits`` as an openssl-vulnkey list; return the line count."""
    table = BlocklistTable.open(blocklists, bits)
    lines = sorted({f"{int(h):016x}{int(lo):04x}" for h, lo in zip(table.hi, table.lo, strict=True)})
    header = f"# RSA-{bits} weak keys (CVE-2008-0166), openssl-vulnkey format, from devicedefender-audit\n"
    out.write_text(header + "\n".join(lines) + "\n")
    return len(lines)
