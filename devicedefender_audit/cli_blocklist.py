"""``python -m devicedefender_audit blocklist``: regenerate, build, inspect, import and export the
CVE-2008-0166 blocklists.

Kept out of :mod:`.cli` (as ``export`` and ``serve`` are) so that the other commands never carry
the generator's arguments: :func:`add_blocklist_command` only declares them, and the generator
and list modules are imported when a subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devicedefender_audit.exit_codes import EXIT_OK, EXIT_USAGE

EC_CURVES = ("p256", "p384", "p521")


def _key_bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 512 <= value <= 16384 or value % 8:
        raise argparse.ArgumentTypeError(f"RSA key size must be a multiple of 8 in 512..16384, not {text!r}")
    return value


def _size_or_curve(parser: argparse.ArgumentParser) -> None:
    space = parser.add_mutually_exclusive_group(required=True)
    space.add_argument("--bits", type=_key_bits, help="an RSA key size")
    space.add_argument("--curve", choices=EC_CURVES, help="an EC curve (openssl ecparam -genkey / req -newkey ec)")


def add_blocklist_command(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Declare ``blocklist`` and its subcommands on ``sub``; the command table entry."""
    from devicedefender_audit import cli

    blocklist = sub.add_parser("blocklist", help="CVE-2008-0166 blocklists")
    bsub = blocklist.add_subparsers(dest="blocklist_command", required=True)
    gen = bsub.add_parser("generate", help="regenerate weak keys (resumable) and build the list")
    _size_or_curve(gen)
    gen.add_argument("--platforms", nargs="+", default=None, choices=("le32", "le64", "be32"))
    gen.add_argument("--variants", nargs="+", default=None, choices=("rnd", "nornd-old", "nornd-new", "ssh-keygen"))
    gen.add_argument("--pid-start", type=int, choices=range(32768), default=0, metavar="0..32767")
    gen.add_argument("--pid-stop", type=int, choices=range(1, 32769), default=32768, metavar="1..32768")
    gen.add_argument("--workers", type=cli._positive_int, default=None)
    gen.add_argument("--no-build", action="store_true", help="only compute checkpoints")
    build = bsub.add_parser("build", help="merge checkpoints into the shipped list")
    _size_or_curve(build)
    info = bsub.add_parser("info", help="which key sizes are covered")
    imp = bsub.add_parser("import", help="merge an openssl-vulnkey blacklist.RSA-NNNN file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--bits", type=_key_bits, required=True)
    exp = bsub.add_parser("export", help="write a list in openssl-vulnkey format")
    exp.add_argument("out", type=Path)
    exp.add_argument("--bits", type=_key_bits, required=True)
    for p in (gen, build, info, imp, exp):
        cli._blocklists(p)
    return {"blocklist": cmd_blocklist}


def cmd_blocklist(args: argparse.Namespace) -> int:
    from devicedefender_audit.detectors.debian_weak import default_blocklist_dir

    directory = args.blocklists or default_blocklist_dir()
    return _SUBCOMMANDS[args.blocklist_command](args, directory)


def _generate(args: argparse.Namespace, directory: Path) -> int:
    from devicedefender_audit.debian_weak import generator

    if args.pid_start >= args.pid_stop:
        print("error: --pid-start must be below --pid-stop", file=sys.stderr)
        return EXIT_USAGE
    if args.curve:
        from devicedefender_audit.debian_weak import ec_generator
        from devicedefender_audit.debian_weak.fingerprint import OPENSSL_VARIANTS

        if args.variants and not set(args.variants) <= set(OPENSSL_VARIANTS):
            print("error: EC keys were made by openssl only (variants rnd, nornd-old, nornd-new)", file=sys.stderr)
            return EXIT_USAGE
        manifest = ec_generator.generate_ec_list(
            directory, args.curve, args.platforms or generator.PLATFORM_NAMES,
            args.variants or OPENSSL_VARIANTS, args.pid_start, args.pid_stop, workers=args.workers)
        print(f"EC {args.curve}: {manifest['keys_generated']} keys, complete={manifest['complete']}")
        return EXIT_OK
    chunks = generator.plan(args.bits, args.platforms or generator.PLATFORM_NAMES,
                            args.variants or generator.VARIANT_NAMES, args.pid_start, args.pid_stop)
    computed = generator.generate(directory, chunks, workers=args.workers)
    print(f"computed {computed} new chunk(s) of {len(chunks)} requested")
    if not args.no_build:
        manifest = generator.build(directory, args.bits)
        print(f"RSA-{args.bits}: {manifest['keys_generated']} keys, complete={manifest['complete']}")
    return EXIT_OK


def _build(args: argparse.Namespace, directory: Path) -> int:
    if args.curve:
        from devicedefender_audit.debian_weak import ec_generator

        manifest = ec_generator.build(directory, args.curve)
        print(f"EC {args.curve}: {manifest['keys_generated']} keys, complete={manifest['complete']}")
    else:
        from devicedefender_audit.debian_weak import generator

        manifest = generator.build(directory, args.bits)
        print(f"RSA-{args.bits}: {manifest['keys_generated']} keys, complete={manifest['complete']}")
    return EXIT_OK


def _info(args: argparse.Namespace, directory: Path) -> int:
    """Coverage per RSA size and EC curve; exit 1 when a list cannot be used (damaged, missing)."""
    from devicedefender_audit.detectors.debian_weak import DebianWeakDetector
    from devicedefender_audit.text_table import table

    detector = DebianWeakDetector(directory)
    rows = list(detector.coverage().items())
    print(f"blocklists: {directory}")
    print(table(("RSA BITS", "COVERAGE"), rows) if rows else "no RSA blocklists found")
    ec_rows = list(detector.ec.coverage().items())
    print(table(("EC CURVE", "COVERAGE"), ec_rows) if ec_rows else "no EC blocklists found")
    return EXIT_OK


def _import(args: argparse.Namespace, directory: Path) -> int:
    from devicedefender_audit.cli import _BadInput
    from devicedefender_audit.debian_weak import vulnkey_format

    if not args.file.is_file():
        raise _BadInput(f"{args.file} is {'a directory' if args.file.is_dir() else 'not a file'}; "
                        "give an openssl-vulnkey blacklist.RSA-NNNN file")
    added = vulnkey_format.import_vulnkey_list(directory, args.bits, args.file)
    print(f"added {added} fingerprint(s) to RSA-{args.bits}")
    return EXIT_OK


def _export(args: argparse.Namespace, directory: Path) -> int:
    from devicedefender_audit.cli_export import OutputError, check_output
    from devicedefender_audit.debian_weak import vulnkey_format

    check_output(args.out, "output file")
    try:
        count = vulnkey_format.export_vulnkey_list(directory, args.bits, args.out)
    except OSError as exc:
        if exc.filename not in (None, str(args.out)):
            raise
        raise OutputError(f"output file {args.out} cannot be written: {exc.strerror or exc}", exc) from exc
    print(f"wrote {count} fingerprint(s) to {args.out}")
    return EXIT_OK


_SUBCOMMANDS: dict[str, Callable[[argparse.Namespace, Path], int]] = {
    "generate": _generate, "build": _build, "info": _info, "import": _import, "export": _export,
}
