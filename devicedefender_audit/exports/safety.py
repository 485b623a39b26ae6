"""What may leave the tool in an export: public facts only.

Findings carry free text (a detector's detail, thing names, error messages). The detectors are
written never to put a private key or a prime factor there, but an export goes to places we do
not control (Security Hub, CI logs, spreadsheets), so every exported string passes through
:func:`safe_text` as a second, independent guard: PEM private key blocks and long decimal
integers (a factor of even a 512-bit modulus has 77 digits) are replaced, and only the listed
``additionalInfo`` keys are exported at all.
"""

from __future__ import annotations

import re
from typing import Any

#: ``additionalInfo`` members that describe the key and certificate of a finding.
KEY_INFO_KEYS = ("keyAlgorithm", "keySize", "certificateStatus", "things")
#: ``additionalInfo`` members that are a finding's evidence: a CA's ARN, and the other
#: certificates (ids) or known-list entries (``file:line``) a factorable key matched.
EVIDENCE_KEYS = ("caCertificateArn", "sharedPrimeWith", "sharedPrimeCount", "sameModulusAs", "sameModulusCount",
                 "knownSharedPrime", "knownSameModulus")
#: ``additionalInfo`` members an export may carry; anything added later is left out until listed.
EXPORTED_INFO_KEYS = KEY_INFO_KEYS + EVIDENCE_KEYS

#: Any PEM block whose label says PRIVATE KEY (RSA, EC, ENCRYPTED, OPENSSH, PKCS#8, ...).
_PRIVATE_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL)
#: Decimal runs long enough to be a factor or a private exponent (and far longer than any count,
#: size or timestamp an export legitimately shows).
_LONG_INTEGER = re.compile(r"\d{40,}")
#: Hex runs longer than a certificate id (64) or a SHA-256: moduli, factors, key blobs.
_LONG_HEX = re.compile(r"(?:0x)?[0-9a-fA-F]{65,}")

REDACTED = "[redacted]"


def safe_text(text: str) -> str:
    """``text`` with private key blocks and factor-sized numbers replaced by ``[redacted]``."""
    text = _PRIVATE_PEM.sub(REDACTED, text)
    text = _LONG_INTEGER.sub(REDACTED, text)
    return _LONG_HEX.sub(REDACTED, text)


def safe_value(value: Any) -> Any:
    """:func:`safe_text` applied to every string of a JSON-like value."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {key: safe_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [safe_value(item) for item in value]
    return value


def exported_info(info: dict[str, str]) -> dict[str, str]:
    """The listed ``additionalInfo`` members, made safe."""
    return {key: safe_text(info[key]) for key in EXPORTED_INFO_KEYS if info.get(key)}
