"""Audit AWS IoT device certificates for weak keys (CVE-2008-0166, CVE-2017-15361)."""

__version__ = "0.1.0"
