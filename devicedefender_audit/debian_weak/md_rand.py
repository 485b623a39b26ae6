"""OpenSSL 0.9.8's message-digest PRNG (``crypto/rand/md_rand.c``) with Debian's patch.

Debian commented out ``MD_Update(&m, buf, j)`` in both ``ssleay_rand_add`` and
``ssleay_rand_bytes``. What remains deterministic but still evolving is: the 1023-byte pool
``state``, the 20-byte chaining value ``md``, the counters ``md_count[2]``, the pool indices, and
the process id hashed into the first block of every ``RAND_bytes`` call. This module replays that
state machine step for step so that, given the same sequence of calls (and lengths), it returns
the same bytes the broken library returned.

Only the lengths of ``RAND_add`` inputs matter, so :meth:`DebianMdRand.add` takes a length, not
data. ``RAND_poll`` (``rand_unix.c``) is included because ``RAND_bytes``/``RAND_status`` call it
on first use.
"""

from __future__ import annotations

from hashlib import sha1

from devicedefender_audit.debian_weak.platform import Platform

STATE_SIZE = 1023
MD_DIGEST_LENGTH = 20
HALF_DIGEST = MD_DIGEST_LENGTH // 2
ENTROPY_NEEDED = 32


def _xor_into(state: bytearray, index: int, data: bytes, limit: int) -> int:
    """XOR ``data`` into ``state`` from ``index``, wrapping to 0 once the index reaches ``limit``.

    Mirrors ``state[st_idx++] ^= local_md[k]; if (st_idx >= limit) st_idx = 0;`` including the
    corner where ``index == limit`` on entry (OpenSSL then writes one byte past the hashed
    region before wrapping).
    """
    end = index + len(data)
    if end < limit:
        chunk = int.from_bytes(state[index:end], "little") ^ int.from_bytes(data, "little")
        state[index:end] = chunk.to_bytes(len(data), "little")
        return end
    for byte in data:
        state[index] ^= byte
        index += 1
        if index >= limit:
            index = 0
    return index


def _output_blocks(
    state: bytearray, st_idx: int, st_num: int, length: int, first: bytes, counts: bytes
) -> tuple[bytes, bytes]:
    """The output loop of ``ssleay_rand_bytes`` over ``length`` pool bytes that do not overlap.

    Block i hashes ``previous digest + md_c + 10 pool bytes`` (the pid too in ``first``), XORs
    the first half of its digest over those bytes and outputs the second half. When the blocks
    start inside the pool and cover at most the whole of it, they read and write consecutive
    positions modulo ``st_num`` and none reads what an earlier one wrote, so every block can
    be read first and the pool updated with one XOR. Returns the last digest and the output.
    """
    head = min(length, st_num - st_idx)
    region = bytes(state[st_idx : st_idx + head] + state[: length - head])
    md = sha1(first + counts + region[:HALF_DIGEST]).digest()
    digests = [md]
    for pos in range(HALF_DIGEST, length, HALF_DIGEST):
        md = sha1(md + counts + region[pos : pos + HALF_DIGEST]).digest()
        digests.append(md)
    mask = b"".join(digest[:HALF_DIGEST] for digest in digests)
    mixed = (int.from_bytes(region, "little") ^ int.from_bytes(mask, "little")).to_bytes(length, "little")
    state[st_idx : st_idx + head] = mixed[:head]
    state[: length - head] = mixed[head:]
    return md, b"".join(digest[HALF_DIGEST:] for digest in digests)


def _output_stepwise(
    state: bytearray, st_idx: int, st_num: int, length: int, first: bytes, counts: bytes
) -> tuple[bytes, bytes]:
    """:func:`_output_blocks` block by block, as OpenSSL runs it, for the corners it excludes:
    a start at ``st_idx == st_num`` (the first block then reads from 0 but writes from
    ``st_num``) and outputs longer than the pool."""
    out = bytearray()
    local_md = first
    for _ in range(length // HALF_DIGEST):
        end = st_idx + HALF_DIGEST
        if end <= st_num:
            block = state[st_idx:end]
        else:  # k > 0: the block wraps around the used part of the pool
            block = state[st_idx:st_num] + state[0 : end - st_num]
        # DEBIAN: MD_Update(&m, buf, j) removed between counts and block.
        local_md = sha1(local_md + counts + block).digest()
        st_idx = _xor_into(state, st_idx, local_md[:HALF_DIGEST], st_num)
        out += local_md[HALF_DIGEST:]
    return local_md, bytes(out)


class DebianMdRand:
    """One process's PRNG as Debian's OpenSSL 0.9.8c-1..0.9.8g-8 ran it."""

    def __init__(self, platform: Platform, pid: int) -> None:
        self.platform = platform
        self.pid = pid
        self._pid_bytes = platform.pack_pid(pid)
        self.state = bytearray(STATE_SIZE + MD_DIGEST_LENGTH)
        self.state_num = 0
        self.state_index = 0
        self.md = bytes(MD_DIGEST_LENGTH)
        self.md_count = [0, 0]
        self.entropy = 0.0
        self.initialized = False
        self.stirred_pool = False

    def add(self, num: int, entropy: float) -> None:
        """``RAND_add(buf, num, entropy)``: the contents of ``buf`` are ignored (Debian patch)."""
        st_idx = self.state_index
        count0, count1 = self.md_count
        local_md = self.md
        self.state_index += num
        if self.state_index >= STATE_SIZE:
            self.state_index %= STATE_SIZE
            self.state_num = STATE_SIZE
        elif self.state_num < STATE_SIZE and self.state_index > self.state_num:
            self.state_num = self.state_index
        self.md_count[1] += num // MD_DIGEST_LENGTH + (num % MD_DIGEST_LENGTH > 0)

        state = self.state
        pack_counts = self.platform.pack_counts
        for offset in range(0, num, MD_DIGEST_LENGTH):
            j = min(num - offset, MD_DIGEST_LENGTH)
            m = sha1(local_md)
            k = st_idx + j - STATE_SIZE
            if k > 0:
                m.update(state[st_idx:STATE_SIZE])
                m.update(state[0:k])
            else:
                m.update(state[st_idx : st_idx + j])
            # DEBIAN: MD_Update(&m, buf, j) removed here.
            m.update(pack_counts(count0, count1))
            local_md = m.digest()
            count1 += 1
            st_idx = _xor_into(state, st_idx, local_md[:j], STATE_SIZE)

        self.md = (
            int.from_bytes(self.md, "little") ^ int.from_bytes(local_md, "little")
        ).to_bytes(MD_DIGEST_LENGTH, "little")
        if self.entropy < ENTROPY_NEEDED:
            self.entropy += entropy

    def snapshot(self) -> tuple:
        """Everything later output depends on, so a draw made ahead of time can be taken back."""
        return (
            bytes(self.state), self.state_num, self.state_index, self.md, tuple(self.md_count),
            self.entropy, self.initialized, self.stirred_pool,
        )  # fmt: skip

    def restore(self, snapshot: tuple) -> None:
        """Return to a :meth:`snapshot`: the next output is the one that followed it."""
        state, self.state_num, self.state_index, self.md, counts, *flags = snapshot
        self.state[:] = state
        self.md_count = list(counts)
        self.entropy, self.initialized, self.stirred_pool = flags

    def poll(self) -> None:
        """``RAND_poll`` from ``rand_unix.c``: 32 bytes of /dev/urandom, then pid, uid, time."""
        self.add(ENTROPY_NEEDED, float(ENTROPY_NEEDED))
        for _ in range(3):
            self.add(self.platform.long_size, 0.0)

    def status(self) -> bool:
        """``RAND_status``: polls on first use, reports whether the pool counts as seeded."""
        if not self.initialized:
            self.poll()
            self.initialized = True
        return self.entropy >= ENTROPY_NEEDED

    def _stir(self) -> None:
        """First ``RAND_bytes`` stirs the whole pool with dummy 20-byte adds."""
        remaining = STATE_SIZE
        while remaining > 0:
            self.add(MD_DIGEST_LENGTH, 0.0)
            remaining -= MD_DIGEST_LENGTH

    def bytes(self, num: int) -> bytes:
        """``RAND_bytes``/``RAND_pseudo_bytes`` (identical once seeded)."""
        if num <= 0:
            return b""
        num_ceil = (1 + (num - 1) // HALF_DIGEST) * HALF_DIGEST
        if not self.initialized:
            self.poll()
            self.initialized = True
        do_stir = not self.stirred_pool
        ok = self.entropy >= ENTROPY_NEEDED
        if not ok:
            self.entropy = max(self.entropy - num, 0.0)
        if do_stir:
            self._stir()
            if ok:
                self.stirred_pool = True

        state = self.state
        st_idx = self.state_index
        st_num = self.state_num
        counts = self.platform.pack_counts(*self.md_count)
        local_md = self.md
        self.state_index += num_ceil
        if self.state_index > self.state_num:
            self.state_index %= self.state_num
        self.md_count[0] += 1

        # "if (curr_pid) ... curr_pid = 0": the pid goes into the first block only, never if 0.
        first = (self._pid_bytes if self.pid else b"") + local_md
        if st_idx < st_num and num_ceil <= st_num:
            local_md, out = _output_blocks(state, st_idx, st_num, num_ceil, first, counts)
        else:
            local_md, out = _output_stepwise(state, st_idx, st_num, num_ceil, first, counts)

        m = sha1(counts)
        m.update(local_md)
        m.update(self.md)
        self.md = m.digest()
        return out[:num]
