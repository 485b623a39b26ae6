"""Saving and loading a DynamoDB store's fleet state in S3 (store/s3_fleet_state.py), on a moto server.

Run: ``.venv/bin/python benchmarks/bench_fleet_state_s3.py [KEYS ...]`` (default 100000 1000000).

A state of KEYS keys has the saved form of a real one (``fleet_audit.encode``: 64-byte member
ids, the product of KEYS 2048-bit moduli, 256 bytes a key), but its product is random bytes of
that size: building a real one takes a batch GCD (~17 min at a million keys, see
``bench_batch_gcd.py``), and S3 neither knows nor cares what the bytes are. Each size runs in a
fresh process against a moto server in a process of its own on loopback (HTTP, like S3, but in
this machine's memory and CPU: a real bucket's figures depend on the network), and prints the object size, the time of
``save_fleet_state`` (a multipart upload of 8 MB parts), of ``load_fleet_state`` (one GetObject)
and of decoding what was loaded (the format's checksums), and the process's peak RSS growth over
each step, beside the state's own size (the parts the engine hands over are held anyway).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from process_memory import rss_mib

KEYS = (100_000, 1_000_000)


class RssPeak:
    """The process's largest resident size during a ``with`` block, sampled every 5 ms from
    ``/proc/self/statm`` (``ru_maxrss`` is the peak of the whole life, set while the state was made)."""

    def __enter__(self) -> Self:
        self.start = self.peak = rss_mib()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())

    @property
    def growth(self) -> float:
        return self.peak - self.start


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server in its own process (its memory is not the client's), at its endpoint URL."""
    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                requests.get(f"{endpoint}/moto-api/data.json", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait()


def one(keys: int) -> None:
    """Save, load and decode a state of ``keys`` keys; one line of figures."""
    import boto3
    import gmpy2
    import numpy as np

    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.factoring.fleet_audit import Members, decode, encode
    from devicedefender_audit.factoring.fleet_state import FleetState
    from devicedefender_audit.store import open_store

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    ids = np.unique(np.array([os.urandom(32).hex().encode() for _ in range(keys)], dtype="S64"))
    product = gmpy2.from_binary(b"\x01\x01" + np.random.default_rng(keys).bytes(256 * keys))  # a positive mpz
    parts = encode(FleetState(product, {}, len(ids), len(ids)), Members(ids))
    size = sum(len(part) for part in parts)
    del product
    with moto_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dda-fleet")
        store = open_store("dynamodb://dda-audits/123456789012/us-east-1?fleet-state=s3://dda-fleet/fleet-state",
                           AwsTarget(endpoint_url=endpoint))
        with RssPeak() as saving:
            started = time.perf_counter()
            store.save_fleet_state(parts)
            saved = time.perf_counter() - started
        del parts
        with RssPeak() as loading:
            started = time.perf_counter()
            data = store.load_fleet_state()
            loaded = time.perf_counter() - started
        assert data is not None and len(data) == size
        started = time.perf_counter()
        state, members = decode(data)
        decoded = time.perf_counter() - started
        assert state.keys == len(members) == len(ids)
        store.close()
    mib = size / 2**20
    print(f"{keys:>9,} keys  {mib:7.1f} MiB  save {saved:6.2f} s ({mib / saved:5.0f} MiB/s, RSS +{saving.growth:4.0f} MiB)"
          f"  load {loaded:6.2f} s ({mib / loaded:5.0f} MiB/s, RSS +{loading.growth:4.0f} MiB)"
          f"  decode {decoded:5.2f} s  (load average {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", type=int, default=list(KEYS))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one)
        return
    for keys in args.keys:
        subprocess.run([sys.executable, __file__, "--one", str(keys)], check=True)


if __name__ == "__main__":
    main()
