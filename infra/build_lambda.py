"""Build the two Lambda artifacts of ``infra/template.yaml`` and measure them against Lambda's limits.

* ``function.zip`` -- the ``devicedefender_audit`` package and its run-time dependencies
  (cryptography, gmpy2, pydantic, boto3) as manylinux wheels for the Lambda runtime. numpy and
  moto are left out: only blocklist generation and the demo use them, never a Lambda.
* ``blocklists-layer.zip`` -- the shipped CVE-2008-0166 lists (``blocklists/*.ddwk`` and their
  manifests), extracted by Lambda to ``/opt/blocklists`` (``DDA_BLOCKLISTS``).

The lists are a layer because they are data that changes on its own schedule (a regenerated or
extended list is a new layer version, uploaded under a new key, with no code rebuild) and the
functions share one copy. Lambda's limits: 250 MB unzipped for a function and all its layers;
50 MB for a zip uploaded directly (the template deploys from S3, where only the unzipped limit
applies). So the exit status is 1 only past 250 MB unzipped (a container image would be
needed); a zip over 50 MB is named, as one to upload through S3.

    .venv/bin/python infra/build_lambda.py [--out build/lambda] [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIME_DEPENDENCIES = ("boto3", "cryptography", "gmpy2", "pydantic")
UNZIPPED_LIMIT = 250 * 1024 * 1024
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _zip(tree: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(tree).as_posix())


def _install_dependencies(target: Path, python_version: str, platform: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
                    "--platform", platform, "--implementation", "cp", "--python-version", python_version,
                    "--only-binary=:all:", *RUNTIME_DEPENDENCIES], check=True)


def build(out: Path, python_version: str, platform: str) -> dict[str, tuple[int, int]]:
    """Build both artifacts under ``out``; {artifact: (unzipped bytes, zipped bytes)}."""
    shutil.rmtree(out, ignore_errors=True)
    function_tree, layer_tree = out / "function", out / "layer"
    _install_dependencies(function_tree, python_version, platform)
    dependencies = _tree_size(function_tree)
    shutil.copytree(REPO / "devicedefender_audit", function_tree / "devicedefender_audit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    lists = layer_tree / "blocklists"
    lists.mkdir(parents=True)
    for path in sorted((REPO / "blocklists").glob("*.ddwk")) + sorted((REPO / "blocklists").glob("*.json")):
        shutil.copy2(path, lists / path.name)
    _zip(function_tree, out / "function.zip")
    _zip(layer_tree, out / "blocklists-layer.zip")
    return {
        "dependencies": (dependencies, 0),
        "function.zip": (_tree_size(function_tree), (out / "function.zip").stat().st_size),
        "blocklists-layer.zip": (_tree_size(layer_tree), (out / "blocklists-layer.zip").stat().st_size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "lambda")
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--platform", default="manylinux2014_x86_64")
    args = parser.parse_args(argv)
    sizes = build(args.out, args.python_version, args.platform)
    mb = 1024 * 1024
    for name, (unzipped, zipped) in sizes.items():
        print(f"{name:22} unzipped {unzipped / mb:7.1f} MB" + (f"   zipped {zipped / mb:6.1f} MB" if zipped else ""))
    unzipped = sizes["function.zip"][0] + sizes["blocklists-layer.zip"][0]
    zipped = sizes["function.zip"][1] + sizes["blocklists-layer.zip"][1]
    print(f"{'function + layer':22} unzipped {unzipped / mb:7.1f} MB   zipped {zipped / mb:6.1f} MB "
          f"(limits: {UNZIPPED_LIMIT // mb} MB unzipped, {DIRECT_UPLOAD_LIMIT // mb} MB per direct-upload zip)")
    for name, (_, zipped) in sizes.items():
        if zipped > DIRECT_UPLOAD_LIMIT:
            print(f"{name} is over {DIRECT_UPLOAD_LIMIT // mb} MB zipped: upload it through S3 (as the template "
                  "does), not directly")
    fits = unzipped <= UNZIPPED_LIMIT
    print("fits a zip deployment" if fits else "does NOT fit: use a container image")
    return 0 if fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
