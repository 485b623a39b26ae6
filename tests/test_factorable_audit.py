"""``DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK`` in the audit engine, against moto: a fleet with planted
shared primes, close primes and short keys is flagged exactly, good keys are not, no factor leaks."""

from __future__ import annotations

import json
import random

import gmpy2
from botocore.exceptions import ClientError
from conftest import issue_certificate, register, run_audit
from cryptography.hazmat.primitives.asymmetric import rsa

from devicedefender_audit.checks import factorable_check, key_quality_check
from devicedefender_audit.detectors import default_detectors
from devicedefender_audit.factoring.codes import (
    DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK,
    DUPLICATE_KEY,
    FERMAT_FACTORABLE,
    INSECURE_PARAMETERS,
    SHARED_PRIME,
)

E = 65537


def prime(rng: random.Random, bits: int = 1024) -> int:
    while True:
        p = int(gmpy2.next_prime(rng.getrandbits(bits) | 3 << (bits - 2)))  # p*q has 2*bits bits
        if p.bit_length() == bits and gmpy2.gcd(p - 1, E) == 1:
            return p


def key(p: int, q: int):
    """The RSA private key with primes ``p`` and ``q``, to issue a certificate for."""
    n, phi = p * q, (p - 1) * (q - 1)
    d = int(gmpy2.invert(E, phi))
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), int(gmpy2.invert(q, p)),
                                    rsa.RSAPublicNumbers(E, n))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def test_factorable_keys_are_flagged_exactly(iot):
    rng = random.Random(2012)
    shared, triple = prime(rng), prime(rng)
    close = prime(rng)
    plan = {
        "pair-a": (shared, prime(rng)), "pair-b": (shared, prime(rng)),
        "triple-a": (triple, prime(rng)), "triple-b": (triple, prime(rng)), "triple-c": (triple, prime(rng)),
        "fermat": (close, int(gmpy2.next_prime(close + 2**200))),
        "short": (prime(rng, 512), prime(rng, 512)),
    }
    plan.update({f"good-{i}": (prime(rng), prime(rng)) for i in range(12)})
    ids, primes = {}, {}
    for name, (p, q) in plan.items():
        ids[name] = register(iot, issue_certificate(key(p, q), name))["certificateId"]
        primes[name] = (p, q)
    twin = register(iot, issue_certificate(key(*plan["good-0"]), "good-0-again"))["certificateId"]

    audited = run_audit(iot, [], checks=[key_quality_check(default_detectors()), factorable_check()])
    factorable = [f for f in audited.findings if f.check_name == DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK]
    got = {(f.certificate_id, f.reason_for_non_compliance_code) for f in factorable}
    expected = {(ids[n], SHARED_PRIME) for n in ("pair-a", "pair-b", "triple-a", "triple-b", "triple-c")}
    expected |= {(ids["fermat"], FERMAT_FACTORABLE), (ids["short"], INSECURE_PARAMETERS)}
    expected |= {(ids["good-0"], DUPLICATE_KEY), (twin, DUPLICATE_KEY)}
    assert got == expected

    by = {(f.certificate_id, f.reason_for_non_compliance_code): f for f in factorable}
    pair = by[(ids["pair-a"], SHARED_PRIME)]
    assert pair.non_compliant_resource.additional_info["sharedPrimeWith"] == ids["pair-b"]
    assert by[(ids["triple-a"], SHARED_PRIME)].non_compliant_resource.additional_info["sharedPrimeCount"] == "2"
    assert pair.severity == "CRITICAL" and by[(ids["short"], INSECURE_PARAMETERS)].severity == "HIGH"

    details = audited.task.audit_details
    assert details[DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK].non_compliant_resources_count == 9
    assert details[DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK].check_run_status == "COMPLETED_NON_COMPLIANT"
    assert details["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"].check_run_status == "COMPLETED_COMPLIANT"
    assert audited.task.task_statistics.total_checks == 2

    # No prime factor appears anywhere in what the audit stored or would print.
    wire = json.dumps([f.to_aws() for f in audited.findings] + [audited.task.to_aws()])
    for p, q in primes.values():
        assert str(p) not in wire and str(q) not in wire and format(p, "x") not in wire


def test_fleet_is_compared_with_known_moduli_and_primes(iot):
    from devicedefender_audit.factoring.known import KnownValues

    rng = random.Random(2019)
    leaked, other = prime(rng), prime(rng)
    weak = register(iot, issue_certificate(key(leaked, prime(rng)), "weak"))["certificateId"]
    known_key = register(iot, issue_certificate(key(other, prime(rng)), "listed"))["certificateId"]
    listed = key(other, prime(rng))  # not in the fleet: a modulus from some published list
    register(iot, issue_certificate(key(prime(rng), prime(rng)), "good"))
    known = KnownValues.parse(f"# published\n{leaked}\nModulus={listed.public_key().public_numbers().n:X}\n",
                              "known.txt")
    audited = run_audit(iot, [], checks=[factorable_check(known)])
    got = {(f.certificate_id, f.reason_for_non_compliance_code) for f in audited.findings}
    assert got == {(weak, SHARED_PRIME), (known_key, SHARED_PRIME)}
    info = {f.certificate_id: f.non_compliant_resource.additional_info for f in audited.findings}
    assert info[weak]["knownSharedPrime"] == "known.txt:2"
    assert info[known_key]["knownSharedPrime"] == "known.txt:3"
    assert str(leaked) not in json.dumps([f.to_aws() for f in audited.findings])


def test_unreadable_known_moduli_file_is_a_usage_error(capsys, tmp_path, aws_env):
    from devicedefender_audit.cli import main

    bad = tmp_path / "known.txt"
    bad.write_text("1234abcd\n")
    assert main(["run", "--known-moduli", str(bad), "--endpoint-url", "http://127.0.0.1:9", "--no-progress"]) == 2
    assert "known.txt:1" in capsys.readouterr().err


def _shared_prime_findings(iot, store, names: list[str]) -> tuple[dict[str, str], list[str]]:
    from devicedefender_audit.audit import Audit
    from devicedefender_audit.checks import make_checks

    task = Audit(iot, store, [], checks=make_checks(names, [])).run()
    flagged = sorted(f.certificate_id for f in store.findings(task.task_id)
                     if f.reason_for_non_compliance_code == SHARED_PRIME)
    return {name: task.audit_details[name].check_run_status for name in names}, flagged


def test_the_device_check_alone_compares_the_fleet_with_the_ca_keys(iot, tmp_path):
    """Run without the CA checks (--checks, or a configuration enabling only the device check),
    the device check listed no CA: a device key sharing a prime with the account's CA was
    compliant. A CA listing that fails leaves the check partial, never compliant."""
    from test_ca_checks import register_ca

    from devicedefender_audit.store import open_store

    rng = random.Random(7)
    p = prime(rng)
    register_ca(iot, issue_certificate(key(p, prime(rng)), "ca"))
    device = register(iot, issue_certificate(key(p, prime(rng)), "device"))["certificateId"]
    store = open_store(tmp_path / "audits.sqlite3")
    checks = [DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK]
    assert _shared_prime_findings(iot, store, checks) == ({checks[0]: "COMPLETED_NON_COMPLIANT"}, [device])

    def denied(**_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "ListCACertificates")

    iot.meta.events.register("before-call.iot.ListCACertificates", denied)
    task_statuses, flagged = _shared_prime_findings(iot, store, checks)
    assert (task_statuses, flagged) == ({checks[0]: "FAILED"}, [])  # not compared with the CA: never compliant


def test_a_key_an_older_parser_could_not_read_is_compared_in_the_audit_that_reads_it(iot, tmp_path):
    """The inventory keeps a PEM an older parser could not read; today's reads it in the check
    pass, after the fleet comparison: the key and its partner were compliant for one audit."""
    from devicedefender_audit.aws.iot_certificates import ListedCertificate
    from devicedefender_audit.store import open_store
    from devicedefender_audit.store.base import Description

    rng = random.Random(8)
    p = prime(rng)
    old = issue_certificate(key(p, prime(rng)), "old")
    unread = register(iot, old)["certificateId"]
    partner = register(iot, issue_certificate(key(p, prime(rng)), "partner"))["certificateId"]
    store = open_store(tmp_path / "audits.sqlite3")
    arn = f"arn:aws:iot:us-east-1:123456789012:cert/{unread}"
    store.record_listing([ListedCertificate(unread, arn, "ACTIVE", None)], 1.0)
    store.save_descriptions([Description(unread, unparsed_pem=old, error_code="MALFORMED_CERTIFICATE",
                                         error_message="an older parser could not read it")])
    checks = [DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK]
    assert _shared_prime_findings(iot, store, checks) == ({checks[0]: "COMPLETED_NON_COMPLIANT"},
                                                         sorted([unread, partner]))
