"""The factorable check's fleet state of a DynamoDB store, kept as one S3 object.

Why S3: the state (:mod:`devicedefender_audit.factoring.fleet_audit`) is a few hundred MB at a
million keys (the fleet's product and its members), which would be hundreds of 400 KB DynamoDB
items written and read back at each audit, and a Lambda's ``/tmp`` does not outlive its instance.
Without a kept state, every audit compares the fleet in full: about a minute at 100,000 keys,
but 17 minutes and 6.7 GB at a million, beyond a Lambda's 15-minute limit.

The location is an option of the store's URL, ``dynamodb://TABLE?fleet-state=s3://BUCKET/PREFIX``
(:func:`devicedefender_audit.store.open_store`); each store, and each account-region partition of
a table, keeps its own object, ``PREFIX/TABLE[/ACCOUNT/REGION]/fleet-state``
(:meth:`S3Location.key_for`), so partitions never read each other's state and two tables can
share a prefix.

Saving streams the parts (:class:`PartsReader`) through boto3's managed upload: one ``PutObject``,
or a multipart upload of 8 MB parts for a large state, never the whole state joined in memory.
Either way S3 makes the new object visible at once and whole (a multipart upload only when it is
completed; a failed one is aborted), so a reader sees the previous state or the new one, never
part of one. No encryption is asked for: the object gets the bucket's default encryption (every
bucket has SSE-S3 at least; ``infra/template.yaml``'s ``FleetBucket`` asks for it explicitly).
Loading is one ``GetObject``; a missing object is "no state yet", any other failure a
:class:`StoreError` saying what to grant, which the engine reports as its reason to compare in
full. A damaged object is caught by the format's own checksums.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig

from devicedefender_audit.aws.errors import AWS_ERRORS, aws_error_code, aws_error_message
from devicedefender_audit.store.base import StoreError

if TYPE_CHECKING:
    from devicedefender_audit.aws.clients import AwsTarget

#: The object's name under the store's prefix.
OBJECT_NAME = "fleet-state"
#: S3 bucket naming rules (general purpose buckets): 3-63 of a-z 0-9 . -, a letter or digit at each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: Key prefix characters kept to S3's "safe" set, so the object's key is the one an IAM policy names.
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/-]*")
#: A missing object (``NoSuchKey``); S3 answers 403 instead when the caller may not list the bucket.
_MISSING = frozenset({"NoSuchKey", "404"})
_DENIED = frozenset({"AccessDenied", "403", "AllAccessDisabled"})
#: Managed upload: 8 MB parts, 4 sent at a time; s3transfer reads up to 10 parts ahead, so a save
#: grows the process by ~110 MB at a million keys (``benchmarks/bench_fleet_state_s3.py``).
TRANSFER = TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20, max_concurrency=4)


@dataclass(frozen=True)
class S3Location:
    """``s3://BUCKET/PREFIX``: where a DynamoDB store's fleet states are kept."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> S3Location:
        """``s3://BUCKET[/PREFIX]`` (also ``s3:/BUCKET...``, as :class:`pathlib.Path` leaves it);
        anything else is one :class:`StoreError` saying how to write it."""
        match = re.fullmatch(r"s3:/+([^/]*)(?:/(.*))?", text)
        bucket, prefix = (match.group(1), (match.group(2) or "").strip("/")) if match else ("", "")
        # A "." or ".." segment: pathlib.Path (--store, $DDA_STORE) drops the first, so one location
        # would name two keys, and S3 answers 400 to a request whose path holds the second.
        if not match or not _BUCKET.fullmatch(bucket) or ".." in bucket or not _PREFIX.fullmatch(prefix) \
                or "//" in prefix or {".", ".."} & set(prefix.split("/")):
            raise StoreError(f"fleet state location {text!r}: write it as s3://BUCKET/PREFIX (a bucket name of "
                             "3 to 63 of a-z 0-9 . -; a prefix of A-Z a-z 0-9 / ! - _ . * ' ( ), "
                             "with no . or .. between slashes)")
        return cls(bucket, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key_for(self, table: str, partition: str | None) -> str:
        """The object of one store: ``PREFIX/TABLE[/ACCOUNT/REGION]/fleet-state``."""
        return "/".join(part for part in (self.prefix, table, partition, OBJECT_NAME) if part)


class PartsReader(io.RawIOBase):
    """A read-only, seekable file over the state's parts, so that boto3's managed upload can read
    it in parts without the parts being joined (a quarter of a gigabyte at a million keys)."""

    def __init__(self, parts: Sequence[bytes]) -> None:
        super().__init__()
        self._parts = [memoryview(part).cast("B") for part in parts]
        self._starts = []
        offset = 0
        for part in self._parts:
            self._starts.append(offset)
            offset += len(part)
        self._size = offset
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        pieces = []
        for start, part in zip(self._starts, self._parts):
            low, high = max(self._position, start), min(end, start + len(part))
            if low < high:
                pieces.append(part[low - start : high - start])
        self._position = max(self._position, end)
        return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)


class S3FleetState:
    """One store's fleet state object: :meth:`load` and :meth:`save` for the store's methods of
    the same names (:class:`~devicedefender_audit.store.base.Store`)."""

    def __init__(self, target: AwsTarget, location: S3Location, key: str) -> None:
        self._target = target
        self.bucket = location.bucket
        self.key = key
        self.url = f"s3://{self.bucket}/{key}"

    @cached_property
    def _s3(self) -> Any:
        """The S3 client, made with the table's own target (region, profile, endpoint; adaptive
        retries) at the first use, so opening a store makes no S3 call."""
        return self._target.client("s3")

    def _error(self, action: str, needs: str, note: str, exc: BaseException) -> StoreError:
        code = aws_error_code(exc)
        if code == "NoSuchBucket":
            hint = f"the bucket {self.bucket} does not exist"
        elif code in _DENIED:
            hint = f"access denied; the role needs {needs} on arn:aws:s3:::{self.bucket}/{self.key} {note}"
        else:
            hint = aws_error_message(exc)
        return StoreError(f"fleet state {self.url} cannot be {action}: {hint} ({code})")

    def load(self) -> bytes | None:
        """The saved state, or None when there is none yet (one ``GetObject``)."""
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except AWS_ERRORS as exc:
            if aws_error_code(exc) in _MISSING:
                return None
            raise self._error("read", "s3:GetObject", f"(and s3:ListBucket on arn:aws:s3:::{self.bucket}, without "
                              "which a state not saved yet reads as AccessDenied too)", exc) from exc

    def save(self, parts: Sequence[bytes]) -> None:
        """Replace the object with the parts, streamed (see the module doc)."""
        try:
            self._s3.upload_fileobj(PartsReader(parts), self.bucket, self.key, Config=TRANSFER)
        except AWS_ERRORS as exc:
            raise self._error("written", "s3:PutObject", "(and s3:AbortMultipartUpload, so that a failed upload "
                              "leaves no parts behind)", exc) from exc
