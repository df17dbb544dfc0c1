"""Build ``heartbeat-lite.pyz``: heartbeat-lite as one file to drop on a host
that has only Python (the version ``pyproject.toml`` requires, or newer).

    python build_pyz.py [--output heartbeat-lite.pyz]

The archive (a zipapp, PEP 441) holds the module, its schema files and its
run-time dependencies. ``python heartbeat-lite.pyz --help`` runs the command
line; ``sys.path.insert(0, "heartbeat-lite.pyz"); import heartbeat_lite``
embeds it. PostgreSQL is not inside: psycopg is compiled, so a host that
uses ``--db postgresql://...`` installs it beside (``pip install
"psycopg[binary]"``).

Where the pieces come from:

- the module and its schema files: the wheel of this checkout, built by pip
  (``pip wheel``; its build backend, hatchling, is used from this Python when
  installed, else pip fetches it), so the archive's layout is exactly the
  installed one (``heartbeat_lite.schema.sql`` beside the module) and a data
  file added to ``pyproject.toml`` is in the archive too;
- the dependencies: the wheel's own requirements (``pyproject.toml``'s
  ``dependencies``, the one list), resolved by pip from PyPI (or from
  whatever index pip is configured with: ``PIP_INDEX_URL``,
  ``PIP_FIND_LINKS``...), as pure-Python wheels only (``--platform any``,
  ``--abi none``) chosen for the oldest Python the project supports, so
  that the archive runs on every supported version and any machine. A
  dependency without a pure-Python wheel fails the build.

It needs pip in the Python that runs it and network access to the index;
nothing else (CI builds it on a fresh machine, test_packaging.py builds it
in its tests).
"""

import argparse
import email.parser
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipapp
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = "heartbeat-lite.pyz"
MAIN = "import sys\n\nimport heartbeat_lite\n\nsys.exit(heartbeat_lite.main())\n"


def pip(*args):
    """Run pip of this Python quietly; raise SystemExit with its output if it fails."""
    result = subprocess.run([sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check", *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"build_pyz: pip {args[0]} failed:\n{result.stdout}{result.stderr}")


def build_wheel(work):
    """This checkout's wheel, built in ``work``; its path."""
    try:
        import hatchling  # noqa: F401  (the build backend: use it rather than fetch it)
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    pip("wheel", "--no-deps", *isolation, "--wheel-dir", work, HERE)
    return glob.glob(os.path.join(work, "heartbeat_lite-*.whl"))[0]


def oldest_python(wheel):
    """The oldest Python version the wheel supports (its ``Requires-Python: >=X.Y``), as "X.Y"."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
    match = re.fullmatch(r">=\s*(\d+\.\d+)", metadata["Requires-Python"] or "")
    if not match:
        raise SystemExit(f"build_pyz: expected Requires-Python: >=X.Y, found {metadata['Requires-Python']!r}")
    return match.group(1)


def stage(wheel, target):
    """Install the wheel and its dependencies, pure Python only, into ``target``."""
    pip("install", "--target", target, "--only-binary=:all:", "--platform", "any", "--implementation", "py",
        "--abi", "none", "--python-version", oldest_python(wheel), "--no-compile", "--no-warn-conflicts",
        "--no-warn-script-location", wheel)
    shutil.rmtree(os.path.join(target, "bin"), ignore_errors=True)  # console scripts: useless in a zip
    with open(os.path.join(target, "__main__.py"), "w", encoding="utf-8") as f:
        f.write(MAIN)


def build(output):
    """Build the archive at ``output``; return its path."""
    with tempfile.TemporaryDirectory(prefix="build_pyz-") as work:
        target = os.path.join(work, "app")
        stage(build_wheel(work), target)
        zipapp.create_archive(target, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build heartbeat-lite.pyz, a zipapp of the module, "
                                                 "its schemas and its dependencies.")
    parser.add_argument("--output", "-o", default=os.path.join(HERE, OUTPUT),
                        help=f"where to write the archive (default: {OUTPUT} in the checkout)")
    args = parser.parse_args(argv)
    path = build(args.output)
    print(f"built {path} ({os.path.getsize(path):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
