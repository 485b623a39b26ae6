"""Check names and reason codes of the factorable-key audit.

They follow Device Defender's naming (``DEVICE_CERTIFICATE_KEY_QUALITY_CHECK``,
``CERTIFICATE_KEY_VULNERABILITY_CVE-2008-0166``) for flaws that Device Defender does not test:
keys anyone can factor from public data alone.
"""

from __future__ import annotations

from devicedefender_audit.check_names import (  # noqa: F401 - the check names live with the others
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
)

#: The modulus has a prime in common with another key of the fleet or of a known-bad list.
SHARED_PRIME = "CERTIFICATE_KEY_SHARED_PRIME"
#: The modulus's primes are so close that Fermat's method factors it at once.
FERMAT_FACTORABLE = "CERTIFICATE_KEY_FERMAT_FACTORABLE"
#: The modulus is even, prime, or has a small prime factor.
SMALL_FACTOR = "CERTIFICATE_KEY_SMALL_FACTOR"
#: Public exponent below 3 or even, or a modulus below AWS IoT's 2048-bit minimum.
INSECURE_PARAMETERS = "CERTIFICATE_KEY_INSECURE_PARAMETERS"
#: The very same modulus is in another certificate (or a known-key list). Not a factoring
#: result -- nobody outside learns the private key -- but every holder of one of those private
#: keys holds them all, so it is reported, under its own code, never as factorable.
DUPLICATE_KEY = "CERTIFICATE_KEY_DUPLICATE"
