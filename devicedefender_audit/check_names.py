"""The names of the audit checks this service runs, importable without loading any of them.

Device Defender's two key-quality checks and our two factorable-key checks (an extension),
one over device certificates and one over CA certificates each. The CLI builds its option
choices from these before it knows which command runs, so this module imports nothing.
"""

from __future__ import annotations

DEVICE_CERTIFICATE_KEY_QUALITY_CHECK = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"
CA_CERTIFICATE_KEY_QUALITY_CHECK = "CA_CERTIFICATE_KEY_QUALITY_CHECK"
DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK = "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"
CA_CERTIFICATE_KEY_FACTORABLE_CHECK = "CA_CERTIFICATE_KEY_FACTORABLE_CHECK"

#: The model's ``ResourceType`` of the certificates the checks audit.
DEVICE_CERTIFICATE = "DEVICE_CERTIFICATE"
CA_CERTIFICATE = "CA_CERTIFICATE"

#: The resource type each check reports findings on.
RESOURCE_TYPE_OF = {
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK: DEVICE_CERTIFICATE,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK: DEVICE_CERTIFICATE,
    CA_CERTIFICATE_KEY_QUALITY_CHECK: CA_CERTIFICATE,
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK: CA_CERTIFICATE,
}

#: Every check, in the order tasks report them; an audit runs all of them unless told otherwise.
AUDIT_CHECKS = (
    DEVICE_CERTIFICATE_KEY_QUALITY_CHECK,
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
    CA_CERTIFICATE_KEY_QUALITY_CHECK,
    CA_CERTIFICATE_KEY_FACTORABLE_CHECK,
)
