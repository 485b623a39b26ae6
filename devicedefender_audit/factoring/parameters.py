"""RSA parameters that are insecure whatever the primes.

* Public exponent below 3 (e = 1 leaves every message and signature unchanged) or even (no
  private exponent exists: gcd(e, φ(N)) ≥ 2, so the key cannot have been working RSA).
* Modulus below 2048 bits: AWS IoT requires RSA keys of 2048 bits or larger when certificates
  are registered ("Their cryptographic key sizes must meet a minimum required size (for RSA keys,
  they must be 2048 bits or larger)" --
  https://docs.aws.amazon.com/iot-device-defender/latest/devguide/audit-chk-device-cert-key-quality.html,
  and the same for CA certificates in audit-chk-ca-cert-key-quality.html). A shorter key in an
  account predates that rule or came in another way, and 1024-bit and smaller moduli are within
  reach of public factoring efforts.
"""

from __future__ import annotations

from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.factoring.codes import INSECURE_PARAMETERS
from devicedefender_audit.key_material import PublicKeyInfo

#: AWS IoT's registration minimum for RSA keys (see the module docstring for the source).
MIN_RSA_BITS = 2048


def parameter_problems(modulus: int, exponent: int | None) -> list[str]:
    """Every insecure parameter of an RSA public key, in words; empty when there is none."""
    problems = []
    if exponent is not None and exponent < 3:
        problems.append(f"public exponent e = {exponent} is below 3")
    elif exponent is not None and exponent % 2 == 0:
        problems.append(f"public exponent e = {exponent} is even, so no private exponent exists")
    if modulus.bit_length() < MIN_RSA_BITS:
        problems.append(
            f"{modulus.bit_length()}-bit modulus is below AWS IoT's {MIN_RSA_BITS}-bit minimum for RSA keys"
        )
    return problems


class InsecureParametersDetector:
    name = "insecure_parameters"
    reason_code = INSECURE_PARAMETERS
    #: A stored verdict is valid for this minimum only (see ``detectors.detector_version``).
    version = f"min_bits={MIN_RSA_BITS}"

    def check(self, key: PublicKeyInfo) -> DetectorResult:
        if not key.is_rsa or key.modulus is None:
            return DetectorResult(self.name, Verdict.NOT_APPLICABLE, detail=f"{key.algorithm} key")
        problems = parameter_problems(key.modulus, key.exponent)
        if not problems:
            return DetectorResult(self.name, Verdict.CLEAN)
        return DetectorResult(self.name, Verdict.VULNERABLE, self.reason_code, "; ".join(problems))
