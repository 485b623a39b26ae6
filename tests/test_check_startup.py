"""``check`` starts light: what it parses its arguments with and what it imports.

Start-up is most of ``check`` on one file, and a fixed cost on many (issue 8: at most 0.1 s).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import DATA, REPO

from devicedefender_audit import cli

QUALITY = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"


@pytest.mark.parametrize("argv", [
    ["check", "a.pem"],
    ["check", "a.pem", "b.der", "--format", "sarif", "--blocklists", "/tmp/lists"],
    ["check", "--format=json", "-", "c.pub"],
    ["check", "a.pem", "--checks", QUALITY],
])
def test_check_parser_parses_as_the_full_parser(argv):
    assert cli._check_parser().parse_args(argv) == cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [["check"], ["check", "-h"], ["check", "--format", "xml", "a.pem"]])
def test_check_parser_fails_and_helps_as_the_full_parser(argv, capsys):
    outputs = []
    for parser in (cli._check_parser(), cli.build_parser()):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        outputs.append((exited.value.code, capsys.readouterr()))
    assert outputs[0] == outputs[1]


def test_check_of_rsa_public_keys_imports_no_other_command_nor_cryptography():
    """The key-quality check alone (the two CVEs, as badkeys is compared with) imports no other
    command, nor gmpy2 (its import reads package metadata: 10-20 ms), numpy, dataclasses (with
    inspect behind it) or shutil: the ROCA test works on ints, the key records are NamedTuples
    and the check parser's formatter asks the terminal's width itself. (The factorable check's
    per-key tests, run by default, use gmpy2.)"""
    probe = ("import sys; from devicedefender_audit.cli import main; code = main(['check', *sys.argv[1:]]); "
             "print(code, sorted(m for m in sys.modules if m.startswith(('cryptography', 'pydantic', "
             "'devicedefender_audit.cli_', 'gmpy2', 'numpy', 'dataclasses', 'shutil'))))")
    files = [str(DATA / "good" / "pubkey01.pem"), str(DATA / "roca" / "pubkey03.pem"), "--checks", QUALITY]
    out = subprocess.run([sys.executable, "-c", probe, *files], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "3 []"  # the ROCA key found, nothing else imported


def test_check_of_an_ec_key_imports_no_key_generator():
    """The EC lookup needs the curves and the point fingerprint, not the PRNG replay with the RSA
    generator behind it (gmpy2, numpy, the OpenSSL modexp): about 0.1 s of start-up."""
    probe = ("import sys; from devicedefender_audit.cli import main; code = main(['check', *sys.argv[1:]]); "
             "print(code, sorted(m for m in sys.modules if m.startswith(('gmpy2', 'numpy', "
             "'devicedefender_audit.debian_weak.ec_keygen', 'devicedefender_audit.debian_weak.bn_prime'))))")
    files = [str(DATA / "debian-ec" / "ecp256-ssl-le64-pid1-rnd.key"), "--checks", QUALITY]
    out = subprocess.run([sys.executable, "-c", probe, *files], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "3 []"  # the weak key found, no generator imported


@pytest.mark.parametrize("argv", [
    ["run", "--checks", QUALITY, "CA_CERTIFICATE_KEY_QUALITY_CHECK"],
    ["run", "--checks", f"{QUALITY},CA_CERTIFICATE_KEY_QUALITY_CHECK"],
    ["run", "--checks", QUALITY, "--checks", "CA_CERTIFICATE_KEY_QUALITY_CHECK"],
])
def test_run_takes_check_names_spaced_or_comma_separated(argv):
    """`run --checks` and `check --checks` both take comma-separated names; run's also spaced."""
    assert cli.build_parser().parse_args(argv).checks == [QUALITY, "CA_CERTIFICATE_KEY_QUALITY_CHECK"]


def test_check_takes_comma_separated_checks_before_the_files():
    args = cli._check_parser().parse_args(["check", "--checks", f"{QUALITY},{QUALITY.replace('QUALITY', 'FACTORABLE')}",
                                           "a.pem"])
    assert (args.checks, args.files) == ([QUALITY, "DEVICE_CERTIFICATE_KEY_FACTORABLE_CHECK"], ["a.pem"])
