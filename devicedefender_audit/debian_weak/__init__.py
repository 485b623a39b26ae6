"""Replay of Debian's broken OpenSSL 0.9.8 key generation (CVE-2008-0166)."""
