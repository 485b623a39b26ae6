"""The exact ROCA test: one discrete log of N modulo M, not one per prime.

The oracle here is independent of the detector's bit-mask tables: brute-force discrete logs per
prime and the textbook solvability condition of a system of congruences,
``c = c_r (mod o_r)`` for all r has a solution iff ``c_r = c_s (mod gcd(o_r, o_s))`` for all pairs.
"""

from __future__ import annotations

import math
import random
from itertools import combinations

import pytest

from devicedefender_audit.detectors.base import Verdict
from devicedefender_audit.detectors.roca import RocaDetector, has_roca_fingerprint
from devicedefender_audit.key_material import PublicKeyInfo

PRIMES = [p for p in range(2, 168) if all(p % d for d in range(2, p))]
M = math.prod(PRIMES)

#: roca-detect's ``test_fake_mods`` (crocs-muni/roca, roca/tests/test_fingerprint.py): moduli that
#: pass the per-prime test of the original detector but not its discrete-log test.
ROCA_DETECT_FAKE_MODULI = [
    72414128973967872688332736535017614208620368242015797102796086827882754006260204061799547004983731426777596445658889886861027045033760014948048067467947960318205453778973975867532910489227970143091184725760290172935872752222320334100097730483600892686353719855397381316384244147860260153198611313067061116317,
    138345973265163614694352477004469191286459111070564516299381495188624946671065451924677704628892476011773201612117597303315530745738015579159106259811204610647347662150159814774894784524366138220226431598991937057442020694466365850170057813627445465881816985939192840583168136876337135351417253708364245923133,
    60828061238058485055546209519792949600733446820687109700021551748017165461584398468231416589035982737511901116540885252089750919566836183252857475484338913841291095222387779067564971983760619814471104385614285949705697261702933899278537712383849527252611987939947273446907728942539157463443880598175266703887,
    89537174583470428126368559122733093792771267470145172261204043737374783295746735770977275377863486022234354929860172558745137290320682223277990399066906105916137221611218740752167456538787695936927885201842306174187254104613077236292789788064415254034851612157179926431228950237250716554645306298514263908811,
    106012262050781200106909327696665817682864459575156325008493049499578896429709338134583432679663875229243561266610327817994340312544432988100581205278527652776797129380732775139010348828146830433114148695545628251479471386655045041620711043660854155633665634387716779804052874716264079804365681200926368878541,
    98047438997515280074792701497622826536971900999197902469801657195397532486098993597664864573258672004307512856021908739030566926963054863998516343042890871462635847748128662678669505745602483507470396856696130729682439145004123654578085621747843892166517045343501758093052905936670793527374604000360320123643,
    48107859163997579694864893504886560528514286462252528518753580114887818750322128218646068205130016527298578884960923054955072510745551784643455001265439464144751949280776912819502350769576504234639747590328838926697492194274517633949025303073843002256820311079628923909309353364288514091223779706534988233353,
    95193465162148191217844814565725476305218769551232988131351154011966624770961320486395571928859840281251870272532908194236488486001519948267693888769624645565515338392649711205572847326959985300653388437498035890136677149175252923464027081780534454300684502200232492689914254307896522690747556123142494605401,
    168489441676498254188251084620317730514271361861339944910962927459542807975808481932360687459768443345754506784027235857753721317508760585508375364503886428020727192193297507131796130690248490645731180656182669717283026722056291513041731668953221561576833358510127447655469989100576330621949276177058083620677,
    127791896675045040395064468573109425010219774613093240038326469106056928318395608480165676859635771156871330139281596703754063207095456065784747740162970184880536590144647003492364759169502217854388165521994268206346785403332622195574508223431200064645819724980706217912475871209058082764033948277691466089251,
]  # fmt: skip


def discrete_log(x: int, r: int) -> tuple[int, int] | None:
    """``(c, ord_r)`` with 65537**c = x (mod r), by walking the powers; None when there is none."""
    powers, element = [], 1
    while element not in powers:
        powers.append(element)
        element = element * 65537 % r
    return (powers.index(x), len(powers)) if x in powers else None


def passes_every_prime(n: int) -> bool:
    """The original, per-prime fingerprint."""
    return all(discrete_log(n % r, r) is not None for r in PRIMES)


def has_common_log(n: int) -> bool:
    logs = [discrete_log(n % r, r) for r in PRIMES]
    if None in logs:
        return False
    return all((ca - cb) % math.gcd(oa, ob) == 0 for (ca, oa), (cb, ob) in combinations(logs, 2))


def crt(residues: dict[int, int]) -> int:
    """The x mod M with x = residues[r] (mod r) for every prime r."""
    return sum(x * (M // r) * pow(M // r, -1, r) for r, x in residues.items()) % M


def rsa_sized(residue: int, rng: random.Random, bits: int = 2048) -> int:
    """An odd ``bits``-bit number congruent to ``residue`` modulo M (residue is odd: M is even)."""
    return residue + M * (rng.getrandbits(bits - M.bit_length()) | 1 << (bits - M.bit_length() - 1))


def per_prime_logs(rng: random.Random) -> dict[int, int]:
    """Independent exponents per prime: what the per-prime test accepts."""
    return {r: pow(65537, rng.randrange(r), r) for r in PRIMES}


@pytest.mark.parametrize("modulus", ROCA_DETECT_FAKE_MODULI, ids=lambda n: hex(n)[-8:])
def test_roca_detect_crafted_moduli_are_not_flagged(modulus):
    assert passes_every_prime(modulus) and not has_common_log(modulus)
    assert not has_roca_fingerprint(modulus)
    result = RocaDetector().check(PublicKeyInfo("RSA", modulus.bit_length(), modulus, 65537))
    assert result.verdict is Verdict.CLEAN


def test_one_inconsistent_prime_is_enough_to_clear():
    """N = 65537**c modulo every prime but 17, where the exponent is c + 1: 17's order 8 and
    5's order 4 then disagree about c mod 4, although N mod 17 is still a power of 65537."""
    rng = random.Random(17)
    for _ in range(20):
        c = rng.randrange(1 << 64)
        residues = {r: pow(65537, c, r) for r in PRIMES}
        consistent = rsa_sized(crt(residues), rng)
        residues[17] = pow(65537, c + 1, 17)
        crafted = rsa_sized(crt(residues), rng)
        assert has_roca_fingerprint(consistent) and has_common_log(consistent)
        assert passes_every_prime(crafted) and not has_common_log(crafted)
        assert not has_roca_fingerprint(crafted)


def test_agrees_with_the_congruence_oracle():
    """Moduli that all pass the per-prime test: half from one exponent (ROCA structure), half
    with independent exponents per prime, or one prime's exponent changed."""
    rng = random.Random(2017)
    seen = {True: 0, False: 0}
    for i in range(300):
        if i % 3 == 0:
            residues = per_prime_logs(rng)
        else:
            c = rng.randrange(1 << 64)
            residues = {r: pow(65537, c, r) for r in PRIMES}
            if i % 3 == 2:
                r = rng.choice(PRIMES[1:])
                residues[r] = pow(65537, rng.randrange(r), r)
        modulus = rsa_sized(crt(residues), rng)
        expected = has_common_log(modulus)
        assert has_roca_fingerprint(modulus) is expected, hex(modulus)
        seen[expected] += 1
    assert min(seen.values()) > 50


def test_random_moduli_are_clean():
    rng = random.Random(1)
    assert not any(has_roca_fingerprint(rng.getrandbits(2048) | 1 << 2047 | 1) for _ in range(2000))


def test_even_number_is_not_flagged():
    """65537**c is odd, so no multiple of 2 has the structure, whatever its odd residues."""
    rng = random.Random(3)
    c = rng.randrange(1 << 64)
    residue = crt({r: pow(65537, c, r) for r in PRIMES})
    assert has_roca_fingerprint(residue + M) and not has_roca_fingerprint(residue + M + M // 2)
