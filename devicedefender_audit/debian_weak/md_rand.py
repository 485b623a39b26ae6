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

        out = bytearray()
        # "if (curr_pid) ... curr_pid = 0": the pid goes into the first block only, never if 0.
        prefix = self._pid_bytes if self.pid else b""
        while num > 0:
            j = min(HALF_DIGEST, num)
            num -= j
            end = st_idx + HALF_DIGEST
            if end <= st_num:
                block = state[st_idx:end]
            else:  # k > 0: the block wraps around the used part of the pool
                block = state[st_idx:st_num] + state[0 : end - st_num]
            # DEBIAN: MD_Update(&m, buf, j) removed between counts and block.
            local_md = sha1(prefix + local_md + counts + block).digest()
            prefix = b""
            if end < st_num:  # common case: no wrap, XOR the whole half-digest at once
                mixed = int.from_bytes(block, "little") ^ int.from_bytes(local_md[:HALF_DIGEST], "little")
                state[st_idx:end] = mixed.to_bytes(HALF_DIGEST, "little")
                st_idx = end
            else:
                st_idx = _xor_into(state, st_idx, local_md[:HALF_DIGEST], st_num)
            out += local_md[HALF_DIGEST : HALF_DIGEST + j]

        m = sha1(counts)
        m.update(local_md)
        m.update(self.md)
        self.md = m.digest()
        return bytes(out)
