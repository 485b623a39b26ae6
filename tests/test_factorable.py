"""Factorable RSA keys: batch GCD (full and incremental), Fermat, small factors, parameters.

Planted weaknesses must be flagged exactly, thousands of good keys not at all, the incremental
path must equal a full recomputation, and no factor may appear in anything a finding carries.
"""

from __future__ import annotations

import math
import random

import gmpy2
import pytest
from conftest import DATA

from devicedefender_audit.detectors.base import DetectorResult, Verdict
from devicedefender_audit.factoring import codes, per_key_detectors, trees
from devicedefender_audit.factoring.fermat import MAX_STEPS, FermatDetector, fermat_bound_bits, is_fermat_factorable
from devicedefender_audit.factoring.fleet_detector import FleetKeyDetector, evidence, fleet_results
from devicedefender_audit.factoring.fleet_state import MAGIC, FleetState, FleetStateError
from devicedefender_audit.factoring.known import KnownValues, match_known
from devicedefender_audit.factoring.parameters import InsecureParametersDetector
from devicedefender_audit.factoring.sharing import MAX_LISTED, FleetFinding, coprime_base, scan_fleet
from devicedefender_audit.factoring.small_factors import SMALL_PRIME_BOUND, SmallFactorDetector
from devicedefender_audit.factoring.trees import batch_gcd, remainders
from devicedefender_audit.key_material import PublicKeyInfo, public_keys_from_pem

STATE = gmpy2.random_state(20120808)  # fixed: the same fleet every run


def prime(bits: int) -> int:
    """A random prime with its top two bits set, as RSA key generation makes them: two of them
    multiply to exactly twice the bits."""
    return int(gmpy2.next_prime(gmpy2.mpz_urandomb(STATE, bits) | (gmpy2.mpz(3) << (bits - 2))))


def rsa_key(modulus: int, exponent: int = 65537) -> PublicKeyInfo:
    return PublicKeyInfo("RSA", modulus.bit_length(), modulus, exponent)


def real_rsa_keys(folder: str) -> list[PublicKeyInfo]:
    keys = []
    for path in sorted((DATA / folder).iterdir()):
        if path.suffix == ".txt":
            keys.append(rsa_key(int(path.read_text().strip(), 16)))
        else:
            keys.extend(k for k in public_keys_from_pem(path.read_bytes()) if k.is_rsa)
    return keys


@pytest.fixture(scope="module")
def good() -> list[tuple[str, int]]:
    """3,000 keys from independent random primes (256-bit moduli keep this fast; batch GCD and
    the per-key checks below do not depend on the size), plus the real RSA keys of tests/data/good."""
    keys = [(f"good-{i:04d}", prime(128) * prime(128)) for i in range(3000)]
    real = {k.modulus: k for k in real_rsa_keys("good")}  # some files hold the same key
    keys += [(f"real-{i}", modulus) for i, modulus in enumerate(real)]
    return keys


@pytest.fixture(scope="module")
def planted() -> tuple[list[tuple[str, int]], dict[str, FleetFinding], list[int]]:
    """Weak keys, exactly what the fleet scan must say about each, and their primes."""
    p = [prime(128) for _ in range(12)]
    r = [prime(128) for _ in range(8)]
    keys = [
        ("pair-a", p[0] * r[0]), ("pair-b", p[0] * r[1]),  # one shared prime
        ("tri-a", p[1] * r[2]), ("tri-b", p[1] * r[3]), ("tri-c", p[1] * r[4]),  # shared by three
        ("full-a", p[2] * p[3]), ("full-b", p[2] * r[5]), ("full-c", p[3] * r[6]),  # both primes shared
        ("cyc-a", p[4] * p[5]), ("cyc-b", p[5] * p[6]), ("cyc-c", p[6] * p[4]),  # every gcd is the modulus
        ("dup-a", p[7] * p[8]), ("dup-b", p[7] * p[8]),  # the same key twice: not factorable
        ("mix-a", p[9] * p[10]), ("mix-b", p[9] * p[10]), ("mix-c", p[9] * r[7]),  # duplicate that shares
    ]  # fmt: skip
    partners = {
        "pair-a": ["pair-b"], "pair-b": ["pair-a"],
        "tri-a": ["tri-b", "tri-c"], "tri-b": ["tri-a", "tri-c"], "tri-c": ["tri-a", "tri-b"],
        "full-a": ["full-b", "full-c"], "full-b": ["full-a"], "full-c": ["full-a"],
        "cyc-a": ["cyc-b", "cyc-c"], "cyc-b": ["cyc-a", "cyc-c"], "cyc-c": ["cyc-a", "cyc-b"],
        "mix-a": ["mix-c"], "mix-b": ["mix-c"], "mix-c": ["mix-a", "mix-b"],
    }  # fmt: skip
    same = {"dup-a": ["dup-b"], "dup-b": ["dup-a"], "mix-a": ["mix-b"], "mix-b": ["mix-a"]}
    expected = {
        key_id: FleetFinding(
            tuple(partners.get(key_id, [])), len(partners.get(key_id, [])),
            tuple(same.get(key_id, [])), len(same.get(key_id, [])),
        )
        for key_id, _ in keys
    }  # fmt: skip
    return keys, expected, p + r


@pytest.fixture(scope="module")
def fleet(good, planted) -> list[tuple[str, int]]:
    keys = good + planted[0]
    random.Random(7).shuffle(keys)
    return keys


# --- the trees --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 3, 17, 64])
def test_batch_gcd_is_gcd_with_the_product_of_the_others(count):
    rng = random.Random(count)
    pool = [prime(24) for _ in range(12)]
    moduli = [rng.choice(pool) * rng.choice(pool) * prime(40) for _ in range(count)]
    gcds, total = batch_gcd(moduli)
    assert total == math.prod(moduli)
    assert gcds == [math.gcd(m, math.prod(moduli[:i] + moduli[i + 1 :])) for i, m in enumerate(moduli)]


def test_remainders_of_one_value_by_many_moduli():
    moduli = [prime(64) * prime(64) for _ in range(33)]
    value = int(gmpy2.mpz_urandomb(STATE, 3000))
    assert remainders(value, moduli) == [value % m for m in moduli]
    assert remainders(value, []) == []


def test_worker_processes_give_the_serial_answer(monkeypatch, fleet):
    moduli = [m for _, m in fleet[:200]]
    monkeypatch.setattr(trees, "MIN_MODULI_PER_WORKER", 50)
    assert batch_gcd(moduli, workers=2) == batch_gcd(moduli, workers=1)


def test_coprime_base_splits_overlapping_values():
    a, b, c = 1009, 1013, 1019
    base = coprime_base([a * b, b * c, a * b * c, c])
    assert sorted(base) == [a, b, c]


# --- the fleet --------------------------------------------------------------------------------


def test_scan_flags_exactly_the_planted_keys(fleet, planted):
    scan = scan_fleet(fleet)
    assert scan.findings == planted[1]
    assert scan.keys == len(fleet)
    assert scan.distinct_moduli == len(fleet) - 2  # dup-b and mix-b repeat a modulus


def test_good_keys_alone_have_no_finding(good):
    scan = scan_fleet(good)
    assert scan.findings == {}
    assert scan.flagged == {}


def test_detector_results_keep_duplicates_apart_from_shared_primes(fleet):
    results = FleetKeyDetector().check_fleet(fleet)
    assert set(results) == {key_id for key_id, _ in fleet}
    by_id = {key_id: {r.detector: r for r in rs} for key_id, rs in results.items()}
    assert by_id["dup-a"]["shared_prime"].verdict is Verdict.CLEAN
    assert by_id["dup-a"]["duplicate_key"].reason_code == codes.DUPLICATE_KEY
    assert "dup-b" in by_id["dup-a"]["duplicate_key"].detail
    assert by_id["pair-a"]["shared_prime"].reason_code == codes.SHARED_PRIME
    assert "pair-b" in by_id["pair-a"]["shared_prime"].detail
    assert by_id["pair-a"]["duplicate_key"].verdict is Verdict.CLEAN
    assert by_id["mix-a"]["shared_prime"].verdict is by_id["mix-a"]["duplicate_key"].verdict is Verdict.VULNERABLE
    flagged = {key_id for key_id, rs in by_id.items() if any(r.verdict is Verdict.VULNERABLE for r in rs.values())}
    assert flagged == {key_id for key_id in by_id if not key_id.startswith(("good-", "real-"))}


def test_keys_from_a_small_prime_pool_match_the_pairwise_definition():
    """Heninger et al.'s worst devices drew primes from a tiny pool: nearly every modulus then
    has both primes shared, and some repeat. Findings must still be exactly the pairwise truth."""
    rng = random.Random(3)
    pool = [prime(64) for _ in range(30)]
    keys = [(f"dev{i:03d}", a * b) for i, (a, b) in enumerate(rng.sample(pool, 2) for _ in range(300))]
    findings = scan_fleet(keys).findings
    for key_id, modulus in keys:
        shared = sorted(k for k, m in keys if m != modulus and math.gcd(m, modulus) != 1)
        same = sorted(k for k, m in keys if m == modulus and k != key_id)
        expected = FleetFinding(tuple(shared[:MAX_LISTED]), len(shared), tuple(same[:MAX_LISTED]), len(same))
        assert findings.get(key_id, FleetFinding()) == expected


def test_a_prime_in_many_keys_lists_a_few_and_counts_all():
    p = prime(128)
    keys = [(f"k{i:02d}", p * prime(128)) for i in range(30)]
    finding = scan_fleet(keys).findings["k05"]
    assert finding.shared_prime_count == 29
    assert finding.shared_prime_with == tuple(f"k{i:02d}" for i in range(11) if i != 5)[:MAX_LISTED]
    assert "and 19 more" in fleet_results(finding)[0].detail


def test_the_same_id_twice_is_refused():
    with pytest.raises(ValueError, match="given twice"):
        scan_fleet([("a", 15), ("a", 15)])


# --- incremental ------------------------------------------------------------------------------


def test_incremental_batches_equal_a_full_recomputation(fleet, tmp_path):
    batches = [fleet[:2000], fleet[2000:2600], fleet[2600:2601], fleet[2601:]]
    state, findings = FleetState.build(batches[0])
    seen = list(batches[0])
    for batch in batches[1:]:
        state.save(tmp_path / "fleet.product")
        state = FleetState.load(tmp_path / "fleet.product")
        changed = state.add(batch, existing=iter(seen))
        seen += batch
        findings.update(changed)
        assert findings == state.findings() == scan_fleet(seen).findings
    full, _ = FleetState.build(fleet)
    assert state.to_bytes() == full.to_bytes()
    assert (state.keys, state.distinct_moduli) == (len(fleet), len(fleet) - 2)


def test_add_names_existing_keys_and_is_read_lazily(good):
    p, q = prime(128), prime(128)
    inventory = good + [("old", p * q)]
    state, _ = FleetState.build(inventory)
    reads = []

    def stream():
        for key in inventory:
            reads.append(key)
            yield key

    unrelated = [("unrelated", prime(128) * prime(128))]
    assert state.add(unrelated, existing=stream()) == {}
    assert reads == []  # no hit: the fleet is not read at all
    inventory += unrelated
    changed = state.add([("new", p * prime(128)), ("copy", p * q)], existing=stream())
    assert len(reads) == len(inventory)
    assert changed["old"] == FleetFinding(("new",), 1, ("copy",), 1)
    assert changed["new"] == FleetFinding(("copy", "old"), 2)
    assert state.distinct_moduli == len(good) + 3  # "copy" repeats a modulus already in the product
    assert state.keys == len(good) + 4


def test_remove_equals_a_full_recomputation_of_what_is_left(fleet):
    state, _ = FleetState.build(fleet)
    gone = [key for key in fleet if key[0] in {"pair-b", "dup-a", "mix-c", "full-a", "good-0001"}]
    changed = state.remove(gone)
    left = [key for key in fleet if key not in gone]
    expected = scan_fleet(left).findings
    assert state.findings() == expected
    assert changed["pair-a"] is None and changed["dup-b"] is None
    assert changed["mix-a"] == expected["mix-a"] and changed["full-b"] is None
    full, _ = FleetState.build(left)
    assert state.to_bytes() == full.to_bytes()


def test_adding_a_key_already_in_the_fleet_is_refused(fleet):
    state, _ = FleetState.build(fleet)
    with pytest.raises(ValueError, match="already in the fleet"):
        state.add([fleet[0]], existing=fleet)
    with pytest.raises(ValueError, match="already in the fleet"):
        state.add([("pair-a", 35)], existing=fleet)


def test_a_stale_state_is_detected(good, planted):
    state, _ = FleetState.build(good + planted[0])
    partner = dict(planted[0])["pair-a"]
    stale_inventory = [key for key in good + planted[0] if key[0] != "pair-a" and key[0] != "pair-b"]
    new = [("new", math.gcd(partner, dict(planted[0])["pair-b"]) * prime(128))]
    with pytest.raises(FleetStateError, match="stale"):
        state.add(new, existing=stale_inventory)
    with pytest.raises(FleetStateError):
        state.remove([("ghost", prime(128) * prime(128))])


def test_a_damaged_state_file_is_refused(good):
    data = FleetState.build(good[:50])[0].to_bytes()
    assert FleetState.from_bytes(data).to_bytes() == data
    for damaged in (data[:-1], data[:-1] + bytes([data[-1] ^ 1]), b"not a state" + data):
        with pytest.raises(FleetStateError):
            FleetState.from_bytes(damaged)


# --- known moduli and primes ------------------------------------------------------------------


def test_known_list_formats_and_matches():
    p, q, r = prime(128), prime(128), prime(128)
    text = f"# leaked\n{p}  # a prime, decimal\n\n0x{q * r:x}\nModulus={r * 65537 * 3:X}\n"
    known = KnownValues.parse(text, "bad.txt")
    assert known.labels == ("bad.txt:2", "bad.txt:4", "bad.txt:5")
    keys = [("uses-p", p * prime(128)), ("is-qr", q * r), ("clean", prime(128) * prime(128))]
    matches = match_known(keys, known)
    assert set(matches) == {"uses-p", "is-qr"}
    assert matches["uses-p"].shares_prime_with == ("bad.txt:2",)
    assert matches["is-qr"].equal_to == ("bad.txt:4",)
    assert matches["is-qr"].shares_prime_with == ("bad.txt:5",)
    results = FleetKeyDetector(known).check_fleet(keys)
    assert results["uses-p"][0].reason_code == codes.SHARED_PRIME and "bad.txt:2" in results["uses-p"][0].detail
    assert results["is-qr"][1].reason_code == codes.DUPLICATE_KEY
    assert [r.verdict for r in results["clean"]] == [Verdict.CLEAN, Verdict.CLEAN]


@pytest.mark.parametrize("line", ["abcdef", "0xZZ", "1", "12 34"])
def test_known_list_refuses_unclear_lines(line):
    with pytest.raises(ValueError, match="bad.txt:1"):
        KnownValues.parse(line, "bad.txt")


# --- per-key detectors ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_2048() -> list[PublicKeyInfo]:
    """Real keys plus RSA-2048 moduli from a pool of random 1024-bit primes."""
    pool = [prime(1024) for _ in range(8)]
    made = [rsa_key(p * q) for i, p in enumerate(pool) for q in pool[i + 1 :]]
    return real_rsa_keys("good") + made


def test_good_keys_pass_every_per_key_detector(good_2048, good):
    for key in good_2048:
        assert [d.check(key).verdict for d in per_key_detectors()] == [Verdict.CLEAN] * 3
    fermat, small = FermatDetector(), SmallFactorDetector()
    for _, modulus in good:
        assert fermat.check(rsa_key(modulus)).verdict is Verdict.CLEAN
        assert small.check(rsa_key(modulus)).verdict is Verdict.CLEAN


def test_fermat_flags_primes_within_the_bound_and_not_beyond():
    p = prime(1024)
    bound = fermat_bound_bits(p * p)
    close = int(gmpy2.next_prime(p + (1 << int(bound) - 1)))
    far = int(gmpy2.next_prime(p + (1 << int(bound) + 8)))
    assert is_fermat_factorable(p * close)
    assert not is_fermat_factorable(p * far)  # needs ~2^17 steps, far past MAX_STEPS
    assert is_fermat_factorable(p * p)
    result = FermatDetector().check(rsa_key(p * close))
    assert result.reason_code == codes.FERMAT_FACTORABLE
    assert f"{MAX_STEPS} steps" in result.detail and f"2^{fermat_bound_bits(p * close):.1f}" in result.detail


def test_fermat_bound_is_what_the_docstring_promises():
    """The loop really catches every |p - q| up to the bound: check at the edge with small primes."""
    for bits in (40, 64):
        p = prime(bits)
        edge = int(gmpy2.isqrt(8 * MAX_STEPS * gmpy2.isqrt(p * p)))  # sqrt(8 * steps * sqrt(N))
        q = int(gmpy2.prev_prime(p + edge))
        assert is_fermat_factorable(p * q, MAX_STEPS)
        assert not is_fermat_factorable(p * q, MAX_STEPS // 2)  # the edge really needs the steps


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: 2 * prime(2047), "even"),
        (lambda: 3 * prime(2046), f"no larger than {SMALL_PRIME_BOUND}"),
        (lambda: 50021 * prime(2032), f"no larger than {SMALL_PRIME_BOUND}"),
        (lambda: prime(2048), "prime"),
        (lambda: prime(683) ** 3, "perfect power"),  # an integer cube root factors it
    ],
    ids=["even", "three", "50021", "prime", "cube"],
)
def test_small_factor_rules(make, words):
    modulus = make()
    result = SmallFactorDetector().check(rsa_key(modulus))
    assert result.verdict is Verdict.VULNERABLE and result.reason_code == codes.SMALL_FACTOR
    assert words in result.detail


def test_a_base_2_pseudoprime_modulus_is_not_called_prime():
    """The prime rule runs a Fermat test to base 2 first; a Carmichael number (6k+1)(12k+1)(18k+1)
    passes it while composite, and must not be reported as a prime modulus."""
    k = 1 << 40
    while not all(gmpy2.is_prime(m * k + 1) for m in (6, 12, 18)):
        k += 1
    carmichael = (6 * k + 1) * (12 * k + 1) * (18 * k + 1)
    assert pow(2, carmichael - 1, carmichael) == 1
    assert SmallFactorDetector().check(rsa_key(carmichael)).verdict is Verdict.CLEAN


def test_a_factor_just_above_the_bound_is_not_small():
    above = int(gmpy2.next_prime(SMALL_PRIME_BOUND))
    assert SmallFactorDetector().check(rsa_key(above * prime(2030))).verdict is Verdict.CLEAN


@pytest.mark.parametrize(
    "exponent, flagged",
    [(1, True), (2, True), (0, True), (-3, True), (4, True), (65536, True), (3, False), (65537, False)],
)
def test_exponent_rules(exponent, flagged, good_2048):
    result = InsecureParametersDetector().check(rsa_key(good_2048[0].modulus, exponent))
    assert (result.verdict is Verdict.VULNERABLE) is flagged
    if flagged:
        assert result.reason_code == codes.INSECURE_PARAMETERS and f"e = {exponent}" in result.detail


def test_short_moduli_are_below_the_aws_minimum():
    debian = real_rsa_keys("debian")
    for key in debian:
        results = {d.name: d.check(key) for d in per_key_detectors()}
        assert results["fermat"].verdict is results["small_factor"].verdict is Verdict.CLEAN
        short = key.bits < 2048
        assert (results["insecure_parameters"].verdict is Verdict.VULNERABLE) is short
        if short:
            assert "below AWS IoT's 2048-bit minimum" in results["insecure_parameters"].detail


def test_non_rsa_keys_are_not_applicable():
    ec = public_keys_from_pem((DATA / "good" / "bk-ec-p256-rfc-example.key").read_bytes())[0]
    assert {d.check(ec).verdict for d in per_key_detectors()} == {Verdict.NOT_APPLICABLE}


# --- no factor anywhere -----------------------------------------------------------------------


def test_no_factor_appears_in_any_result(fleet, planted):
    """Every result, evidence map and the state header, for keys of every weakness; then look for
    each prime (and cofactor) in decimal and hex."""
    secrets = list(planted[2])
    p = prime(1024)
    close, big = int(gmpy2.next_prime(p + (1 << 500))), prime(2032)
    secrets += [p, close, big]
    weak = [p * close, p * p, 50021 * big, 2 * big, p * close * 4]
    secrets += [50021, 2 * p * close]
    results: list[DetectorResult] = [d.check(rsa_key(m, 1)) for m in weak for d in per_key_detectors()]
    assert {r.reason_code for r in results} >= {codes.FERMAT_FACTORABLE, codes.SMALL_FACTOR, codes.INSECURE_PARAMETERS}
    known = KnownValues.parse(f"{planted[2][0]}\n{planted[0][0][1]}\n", "known.txt")
    results += [r for rs in FleetKeyDetector(known).check_fleet(fleet).values() for r in rs]
    state, findings = FleetState.build(fleet)
    texts = [" ".join(map(str, r)) for r in results]  # every field of each result
    texts += [repr(f) + repr(evidence(f)) for f in findings.values()]
    header = state.to_bytes()[len(MAGIC) + 8 : -len(gmpy2.to_binary(state.product))]
    texts.append(header.decode())
    everything = "\n".join(texts)
    for factor in secrets:
        for form in (str(factor), format(factor, "x"), format(factor, "X")):
            assert form not in everything
