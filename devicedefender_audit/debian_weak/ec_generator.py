"""Generate the weak EC key space in checkpointed chunks and build ``ec-<curve>`` blocklists.

The space per curve is 32768 pids x 3 platforms x the 3 openssl variants: ``ecparam -genkey``
and ``req -newkey ec`` seed the PRNG identically (:mod:`.ec_keygen`), so one list covers both,
and OpenSSH of the era made no EC keys. Chunks, checkpoints (``checkpoints/ec-<curve>/``) and
resuming are :mod:`.generator`'s; only what a chunk computes and the manifest differ.

Run ``python -m devicedefender_audit blocklist generate --curve p256`` to generate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devicedefender_audit.debian_weak.blocklist_file import RECORD, write_blocklist
from devicedefender_audit.debian_weak.ec_curves import CURVES, ec_point_fingerprint, table_name
from devicedefender_audit.debian_weak.ec_keygen import weak_ec_point
from devicedefender_audit.debian_weak.fingerprint import PLATFORM_NAMES, Origin, split_fingerprint
from devicedefender_audit.debian_weak.generator import (
    PID_COUNT,
    chunk_file_name,
    generate,
    merge_checkpoints,
)
from devicedefender_audit.debian_weak.platform import PLATFORMS
from devicedefender_audit.debian_weak.weak_tools import OPENSSL_VARIANTS

FINGERPRINT = "last 80 bits of SHA1(uncompressed X9.62 public point: 04 || X || Y)"
TOOLS = "openssl ecparam -genkey / openssl req -newkey ec (variants rnd, nornd-old, nornd-new)"


def checkpoint_dir(blocklists: Path, curve: str) -> Path:
    return blocklists / "checkpoints" / table_name(curve)


@dataclass(frozen=True)
class EcChunk:
    """Consecutive pids of one platform and openssl variant on one curve."""

    curve: str
    platform: str
    variant: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return chunk_file_name(self.platform, self.variant, self.start, self.stop)

    @property
    def label(self) -> str:
        return f"EC {CURVES[self.curve].display}"

    def checkpoint_dir(self, blocklists: Path) -> Path:
        return checkpoint_dir(blocklists, self.curve)

    def compute(self) -> np.ndarray:
        """Regenerate every key of the chunk; records keyed by the point fingerprint."""
        curve, platform = CURVES[self.curve], PLATFORMS[self.platform]
        records = np.empty(self.stop - self.start, dtype=RECORD)
        for i, pid in enumerate(range(self.start, self.stop)):
            point = weak_ec_point(curve, platform, self.variant, pid)
            hi, lo = split_fingerprint(ec_point_fingerprint(point))
            records[i] = (hi, lo, Origin("openssl", self.platform, self.variant, pid).pack())
        return records


def plan(
    curve: str,
    platforms: Iterable[str] = PLATFORM_NAMES,
    variants: Iterable[str] = OPENSSL_VARIANTS,
    pid_start: int = 0,
    pid_stop: int = PID_COUNT,
    chunk_pids: int = 2048,
) -> list[EcChunk]:
    """Chunks covering the requested space, pid ranges outermost like :func:`.generator.plan`.

    EC keys cost a PRNG replay and one scalar multiplication (~0.5 ms), so chunks are larger
    than RSA's to keep the checkpoint count down.
    """
    if curve not in CURVES:
        raise ValueError(f"unknown curve {curve!r}; expected one of {sorted(CURVES)}")
    platforms, variants = list(platforms), list(variants)
    return [
        EcChunk(curve, platform, variant, start, min(start + chunk_pids, PID_COUNT))
        for start in range(pid_start - pid_start % chunk_pids, pid_stop, chunk_pids)
        for platform in platforms
        for variant in variants
    ]


def build(blocklists: Path, curve: str) -> dict:
    """Merge all checkpoints of ``curve`` into ``ec-<curve>.ddwk``; return its manifest."""
    spec = CURVES[curve]
    merged = merge_checkpoints(checkpoint_dir(blocklists, curve), f"EC {spec.display}")
    complete_variants = merged.complete_variants(OPENSSL_VARIANTS)
    manifest = {
        "curve": spec.display,
        "openssl_curve": spec.openssl_name,
        "fingerprint": FINGERPRINT,
        "tools": TOOLS,
        "platforms": sorted(merged.pid_ranges),
        "variants": sorted({v for variants in merged.pid_ranges.values() for v in variants}),
        "pid_ranges": merged.pid_ranges,
        "keys_generated": merged.keys,
        "complete_variants": complete_variants,
        "complete": len(complete_variants) == len(OPENSSL_VARIANTS),
        "generator": "devicedefender_audit.debian_weak (OpenSSL 0.9.8 md_rand + EC_KEY_generate_key replay)",
    }
    return write_blocklist(blocklists, spec.bits, merged.records, manifest, name=table_name(curve))


def generate_ec_list(
    blocklists: Path,
    curve: str,
    platforms: Iterable[str] = PLATFORM_NAMES,
    variants: Iterable[str] = OPENSSL_VARIANTS,
    pid_start: int = 0,
    pid_stop: int = PID_COUNT,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Compute the missing checkpoints of a curve's space and rebuild its list (what
    ``blocklist generate --curve`` runs); return the manifest."""
    generate(blocklists, plan(curve, platforms, variants, pid_start, pid_stop), workers, progress)
    return build(blocklists, curve)
