"""heartbeat-lite installs as a package: ``pip install .`` gives the module,
the ``heartbeat-lite`` command and the schema files, and the README's
embedding example runs against the installed copy from outside the checkout.

To stay fast and offline, the throw-away venv borrows the packages of the
environment running the tests (bottle, waitress, webtest, the build backend),
and pip installs only this checkout, with no index and no build isolation.
"""

import contextlib
import glob
import json
import os
import re
import sqlite3
import subprocess
import sysconfig
import venv

import pytest

import heartbeat_lite

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILES = sorted(os.path.basename(path) for path in glob.glob(os.path.join(HERE, "schema*.sql")))

pytestmark = pytest.mark.slow  # a venv and a wheel build: a few seconds


def readme_python(heading):
    """The first ```python block after ``heading`` in the README."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        match = re.search(rf"^{re.escape(heading)}\n.*?^```python\n(.*?)^```", f.read(), re.M | re.S)
    return match.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A throw-away venv with this checkout pip-installed into it, and a work
    directory outside the checkout: a dict of ``python``, ``bin``, ``root``
    and ``cwd``."""
    root = os.path.realpath(tmp_path_factory.mktemp("venv"))
    venv.create(root, system_site_packages=True, with_pip=False)
    bin_dir = os.path.join(root, "Scripts" if os.name == "nt" else "bin")
    python = os.path.join(bin_dir, "python")
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    # A venv made from inside another venv sees the base interpreter's
    # packages, not the outer venv's: add the outer ones (and their .pth).
    # One statement per line: before Python 3.12 a comprehension in a .pth
    # line cannot see the names its own import bound.
    outer = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    with open(os.path.join(site_packages, "outer_environment.pth"), "w", encoding="utf-8") as f:
        f.writelines(f"import site; site.addsitedir({path!r})\n" for path in outer)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", "--disable-pip-version-check", HERE],
                   capture_output=True, text=True, check=True, env=clean_env())
    cwd = os.path.realpath(tmp_path_factory.mktemp("elsewhere"))
    return {"python": python, "bin": bin_dir, "root": root, "cwd": cwd}


def clean_env():
    """The environment without what would import the checkout instead."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}


def run(installed, *argv):
    return subprocess.run(argv, cwd=installed["cwd"], capture_output=True, text=True, env=clean_env(), timeout=120)


def test_the_outer_environment_is_seen_from_the_throw_away_venv(installed):
    result = run(installed, installed["python"], "-c", "import webtest, hatchling")
    assert result.returncode == 0, result.stderr


def test_the_installed_module_finds_its_schema_files(installed):
    script = (
        "import json, heartbeat_lite as h\n"
        f"names = {SCHEMA_FILES!r}\n"
        "service = h.create_app(db='hb.db')\n"
        "service.close()\n"
        "print(json.dumps({'module': h.__file__, 'schema': h.SCHEMA_PATH,"
        " 'data': {name: h._data_path(name) for name in names}}))\n"
    )
    result = run(installed, installed["python"], "-c", script)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["module"].startswith(installed["root"])
    assert found["schema"] == found["data"]["schema.sql"]
    for name, path in found["data"].items():
        assert path.startswith(installed["root"]) and os.path.basename(path) == "heartbeat_lite." + name
        with open(path, encoding="utf-8") as copy, open(os.path.join(HERE, name), encoding="utf-8") as original:
            assert copy.read() == original.read()
    with contextlib.closing(sqlite3.connect(os.path.join(installed["cwd"], "hb.db"))) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION


def test_the_readme_embedding_example_runs_outside_the_checkout(installed):
    example = os.path.join(installed["cwd"], "embedding_example.py")
    with open(example, "w", encoding="utf-8") as f:
        f.write(readme_python("## Embedding"))
    result = run(installed, installed["python"], example)
    assert result.returncode == 0, result.stderr


def test_the_heartbeat_lite_command_exits_with_mains_status(installed):
    command = os.path.join(installed["bin"], "heartbeat-lite")
    version = run(installed, command, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"heartbeat-lite {heartbeat_lite.__version__}")
    refused = run(installed, command, "--port", "0", "--db", os.path.join(installed["cwd"], "missing", "hb.db"))
    assert refused.returncode == heartbeat_lite.EXIT_CONFIG_ERROR
    assert "heartbeat-lite: error:" in refused.stderr
