"""Generate the weak-key space in checkpointed chunks and merge it into a blocklist.

Work is split into chunks of consecutive pids for one (platform, variant). Each finished chunk
is saved under ``<blocklists>/checkpoints/rsa-<bits>/`` before the next is taken, so a run can
be stopped at any moment and resumed later (even in another session, since checkpoints are
committed); finished chunks are never recomputed. Generation is deterministic: the same chunk
always yields the same bytes.

``build`` merges whatever chunks exist into ``rsa-<bits>.ddwk`` and records in the manifest
exactly which pid ranges are covered, so a partial list is still usable and honest about it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from devicedefender_audit.debian_weak.blocklist_file import (
    RECORD,
    BlocklistTable,
    absent_from,
    manifest_path,
    write_blocklist,
)
from devicedefender_audit.debian_weak.fingerprint import (
    PLATFORM_NAMES,
    UNKNOWN_ORIGIN,
    VARIANT_NAMES,
    Origin,
    split_fingerprint,
    vulnkey_fingerprint,
)
from devicedefender_audit.debian_weak.platform import PLATFORMS
from devicedefender_audit.debian_weak.weak_tools import tool_of, weak_rsa_modulus

PID_COUNT = 32768
CHUNK_PIDS = 512


class WorkChunk(Protocol):
    """What :func:`generate` needs of a chunk, so RSA and EC spaces share the checkpointing."""

    start: int
    stop: int

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...

    def checkpoint_dir(self, blocklists: Path) -> Path: ...

    def compute(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Chunk:
    """``CHUNK_PIDS`` consecutive pids of one platform and variant at one key size."""

    bits: int
    platform: str
    variant: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return chunk_file_name(self.platform, self.variant, self.start, self.stop)

    @property
    def label(self) -> str:
        return f"RSA-{self.bits}"

    def checkpoint_dir(self, blocklists: Path) -> Path:
        return checkpoint_dir(blocklists, self.bits)

    def compute(self) -> np.ndarray:
        return compute_chunk(self)


def chunk_file_name(platform: str, variant: str, start: int, stop: int) -> str:
    """Checkpoint file of pids ``[start, stop)``; :func:`merge_checkpoints` parses it back."""
    return f"{platform}-{variant}-{start:05d}-{stop - 1:05d}.npy"


def checkpoint_dir(blocklists: Path, bits: int) -> Path:
    return blocklists / "checkpoints" / f"rsa-{bits}"


def plan(
    bits: int,
    platforms: Iterable[str] = PLATFORM_NAMES,
    variants: Iterable[str] = VARIANT_NAMES,
    pid_start: int = 0,
    pid_stop: int = PID_COUNT,
) -> list[Chunk]:
    """Chunks covering the requested space, pid ranges aligned to ``CHUNK_PIDS``."""
    # pid ranges outermost, so a partial run covers a clean pid range on every combination.
    chunks = []
    for start in range(pid_start - pid_start % CHUNK_PIDS, pid_stop, CHUNK_PIDS):
        for platform in platforms:
            for variant in variants:
                chunks.append(Chunk(bits, platform, variant, start, min(start + CHUNK_PIDS, PID_COUNT)))
    return chunks


def compute_chunk(chunk: Chunk) -> np.ndarray:
    """Regenerate every key of a chunk and return its records (dtype ``RECORD``)."""
    platform = PLATFORMS[chunk.platform]
    records = np.empty(chunk.stop - chunk.start, dtype=RECORD)
    for i, pid in enumerate(range(chunk.start, chunk.stop)):
        modulus = weak_rsa_modulus(platform, chunk.variant, pid, chunk.bits)
        hi, lo = split_fingerprint(vulnkey_fingerprint(int(modulus)))
        origin = Origin(tool_of(chunk.variant), chunk.platform, chunk.variant, pid).pack()
        records[i] = (hi, lo, origin)
    return records


def _run_chunk(args: tuple[WorkChunk, Path]) -> WorkChunk:
    chunk, directory = args
    records = chunk.compute()
    path = directory / chunk.name
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        np.save(handle, records)
    os.replace(tmp, path)
    return chunk


def generate(
    blocklists: Path,
    chunks: Sequence[WorkChunk],
    workers: int | None = None,
    progress: bool = True,
) -> int:
    """Compute the chunks that have no checkpoint yet; return how many were computed."""
    todo: list[tuple[WorkChunk, Path]] = []
    for chunk in chunks:
        directory = chunk.checkpoint_dir(blocklists)
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / chunk.name).exists():
            todo.append((chunk, directory))
    total_keys = sum(c.stop - c.start for c, _ in todo)
    if not todo:
        return 0
    workers = workers or os.cpu_count() or 1
    began = time.monotonic()
    done_keys = 0
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for finished, chunk in enumerate(pool.imap_unordered(_run_chunk, todo), start=1):
            done_keys += chunk.stop - chunk.start
            if progress:
                elapsed = time.monotonic() - began
                rate = done_keys / elapsed
                eta = (total_keys - done_keys) / rate if rate else 0.0
                print(
                    f"\r{chunk.label}: {finished}/{len(todo)} chunks, {done_keys} keys, "
                    f"{rate:.1f} keys/s, ETA {eta / 60:.1f} min   ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    return len(todo)


def _ranges(starts_stops: list[tuple[int, int]]) -> list[list[int]]:
    """Merge [start, stop) pid ranges into inclusive [first, last] pairs."""
    merged: list[list[int]] = []
    for start, stop in sorted(starts_stops):
        if merged and merged[-1][1] + 1 == start:
            merged[-1][1] = stop - 1
        else:
            merged.append([start, stop - 1])
    return merged


@dataclass(frozen=True)
class Merged:
    """All checkpoints of one space, concatenated, and exactly which pids they cover."""

    records: np.ndarray
    pid_ranges: dict[str, dict[str, list[list[int]]]]  # platform -> variant -> [[first, last]]
    keys: int

    def complete_variants(self, variants: Iterable[str]) -> list[str]:
        """The ``variants`` generated for every pid on every platform."""
        full = [[0, PID_COUNT - 1]]
        return [
            variant for variant in variants
            if all(self.pid_ranges.get(platform, {}).get(variant) == full for platform in PLATFORM_NAMES)
        ]


def merge_checkpoints(directory: Path, label: str) -> Merged:
    """Concatenate the checkpoints in ``directory``; raise if there are none."""
    parts: list[np.ndarray] = []
    coverage: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for path in sorted(directory.glob("*.npy")):
        platform, variant_and_range = path.stem.split("-", 1)
        variant, start, last = variant_and_range.rsplit("-", 2)
        parts.append(np.load(path))
        coverage.setdefault(platform, {}).setdefault(variant, []).append((int(start), int(last) + 1))
    if not parts:
        raise FileNotFoundError(f"no checkpoints for {label} in {directory}")
    pid_ranges = {
        platform: {variant: _ranges(spans) for variant, spans in variants.items()}
        for platform, variants in coverage.items()
    }
    keys = sum(stop - start for v in coverage.values() for s in v.values() for start, stop in s)
    return Merged(np.concatenate(parts), pid_ranges, keys)


def _imported(blocklists: Path, bits: int) -> tuple[np.ndarray, list[dict]]:
    """The entries an earlier ``blocklist import`` added to the table of ``bits`` (origin unknown)
    and the manifest's account of the imports: a rebuild from the checkpoints keeps both, as
    dropping them would silently unflag keys the user listed."""
    path = manifest_path(blocklists, bits)
    imports = json.loads(path.read_text()).get("imported", []) if path.exists() else []
    if not imports:
        return np.empty(0, dtype=RECORD), []
    records = BlocklistTable.open(blocklists, bits).records()
    return records[records["origin"] == UNKNOWN_ORIGIN], imports


def build(blocklists: Path, bits: int) -> dict:
    """Merge all checkpoints of ``bits``, and what was imported into the table before, into the
    shipped table; return its manifest."""
    merged = merge_checkpoints(checkpoint_dir(blocklists, bits), f"RSA-{bits}")
    imported, imports = _imported(blocklists, bits)
    records = merged.records
    if len(imported):  # an imported key generated since is kept once, with its origin
        records = np.concatenate([records, absent_from(imported, records)])
    pid_ranges = merged.pid_ranges
    complete_variants = merged.complete_variants(VARIANT_NAMES)
    manifest = {
        "fingerprint": "last 80 bits of SHA1('Modulus=' + uppercase hex modulus + '\\n')",
        "tools": "openssl genrsa/req (e=65537; variants rnd, nornd-old, nornd-new), "
        "OpenSSH ssh-keygen (e=35; variant ssh-keygen)",
        "platforms": sorted(pid_ranges),
        "variants": sorted({v for variants in pid_ranges.values() for v in variants}),
        "pid_ranges": pid_ranges,
        "keys_generated": merged.keys,
        "complete_variants": complete_variants,
        "complete": len(complete_variants) == len(VARIANT_NAMES),
        "generator": "devicedefender_audit.debian_weak (OpenSSL 0.9.8 md_rand + rsa_gen replay)",
    }
    if imports:
        manifest["imported"] = imports
    return write_blocklist(blocklists, bits, records, manifest)
