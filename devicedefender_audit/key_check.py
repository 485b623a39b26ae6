"""Checking local key files (certificates, keys, CSRs; PEM, OpenSSH or DER) before they are registered.

Every file gets its own outcome: a missing, unreadable, oversized or unparsable file is an error
entry for that file, and the other files are still checked.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from devicedefender_audit.detectors import Detector, DetectorResult, Verdict, check_key
from devicedefender_audit.key_material import (
    MAX_INPUT_BYTES,
    KeyMaterialError,
    PublicKeyInfo,
    parse_key_material,
)

#: The path that means standard input, as in most command-line tools.
STDIN = "-"


class FileCheck(NamedTuple):
    """One key of a file and the detectors' results on it, or an error about the file or a part of it."""

    path: str
    key: PublicKeyInfo | None = None
    results: Sequence[DetectorResult] = ()
    error: str | None = None
    #: Where in the file the key or error is (``"line 12"``); empty when it is about the whole file.
    location: str = ""

    @property
    def vulnerable(self) -> bool:
        return any(r.verdict is Verdict.VULNERABLE for r in self.results)


#: Bytes asked of the OS per read: a key file comes in one read (and an empty one that says the
#: file ended). Asking for the whole cap at once made every read allocate and free 1 MiB, which
#: was a third of ``check``'s time over many small files.
_READ_CHUNK = 64 * 1024


def _read_capped(path: str) -> bytes:
    """The file's content, at most one byte over :data:`MAX_INPUT_BYTES`: enough for the parser to
    refuse an oversized file without reading it whole (or forever, for a device such as /dev/zero)."""
    limit = MAX_INPUT_BYTES + 1
    if path == STDIN:
        return sys.stdin.buffer.read(limit)
    chunks = []
    size = 0
    # A bare descriptor, not a file object: over many small files, making and closing FileIO
    # objects cost a third more than the two reads themselves.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        while size < limit:
            chunk = os.read(descriptor, min(_READ_CHUNK, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _unreadable(exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "is a directory: give the key files in it instead (e.g. DIR/*.pem)"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied: cannot read the file"
    return f"cannot read the file: {exc.strerror or exc}"


def check_files(paths: Sequence[str], detectors: Sequence[Detector]) -> list[FileCheck]:
    """One :class:`FileCheck` per key found (a bundle may hold several) or per error, file by file.

    ``-`` reads standard input. The cyclic garbage collector is paused meanwhile: what is kept per
    file (tuples, lists, ints, bytes) holds no reference cycle, so over many files its passes only
    traverse an ever larger heap for nothing (about 3% of the time over 10,000 files).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return [check for path in paths for check in _check_file(path, detectors)]
    finally:
        if collecting:
            gc.enable()


def _check_file(path: str, detectors: Sequence[Detector]) -> list[FileCheck]:
    try:
        entries = parse_key_material(_read_capped(path))
    except OSError as exc:
        return [FileCheck(path, error=_unreadable(exc))]
    except KeyMaterialError as exc:
        return [FileCheck(path, error=str(exc))]
    checks = []
    for entry in entries:
        if entry.key is None:
            where = f"{entry.location}: " if entry.location else ""
            checks.append(FileCheck(path, error=f"{where}{entry.error}", location=entry.location))
        else:
            checks.append(FileCheck(path, entry.key, check_key(entry.key, detectors), location=entry.location))
    return checks
