"""heartbeat-lite as people get it: ``pip install .`` gives the module, the
``heartbeat-lite`` command and the schema files, and the README's embedding
example runs against the installed copy from outside the checkout;
``build_pyz.py`` builds one file that serves and embeds with nothing
installed; the dependency lists agree.

To stay fast and offline, the throw-away venv of the installed package
borrows the packages of the environment running the tests (bottle, waitress,
webtest, the build backend), and pip installs only this checkout, with no
index and no build isolation. The zipapp's build fetches its dependencies
the way the script does it everywhere (from pip's index) and runs in a venv
with nothing installed.
"""

import contextlib
import glob
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import urllib.request
import venv
import zipfile

import pytest

import build_pyz
import heartbeat_lite
from testing_support import HERE, SEED_BODY, _basic, wait_until

SCHEMA_FILES = sorted(os.path.basename(path) for path in glob.glob(os.path.join(HERE, "schema*.sql")))


def readme_python(heading):
    """The first ```python block after ``heading`` in the README."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        match = re.search(rf"^{re.escape(heading)}\n.*?^```python\n(.*?)^```", f.read(), re.M | re.S)
    return match.group(1)


def clean_env():
    """The environment without what would import the checkout instead, or
    configure the service under test."""
    return {name: value for name, value in os.environ.items()
            if name not in ("PYTHONPATH", "PYTHONHOME") and not name.startswith(heartbeat_lite.ENV_PREFIX)}


def new_venv(root, **options):
    """A venv at ``root`` (from the base interpreter, as ``python -m venv``
    makes it); the path of its python."""
    venv.create(root, with_pip=False, **options)
    return os.path.join(root, "Scripts" if os.name == "nt" else "bin", "python")


###############################################################################
# pip install .
###############################################################################


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A throw-away venv with this checkout pip-installed into it, and a work
    directory outside the checkout: a dict of ``python``, ``bin``, ``root``,
    ``site`` and ``cwd``."""
    root = os.path.realpath(tmp_path_factory.mktemp("venv"))
    python = new_venv(root, system_site_packages=True)
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
    return {"python": python, "bin": os.path.dirname(python), "root": root, "site": site_packages, "cwd": cwd}


def run(installed, *argv):
    return subprocess.run(argv, cwd=installed["cwd"], capture_output=True, text=True, env=clean_env(), timeout=120)


@pytest.mark.slow
def test_the_outer_environment_is_seen_from_the_throw_away_venv(installed):
    result = run(installed, installed["python"], "-c", "import webtest, hatchling")
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_the_installed_module_finds_its_schema_files(installed):
    script = (
        "import json, heartbeat_lite as h\n"
        f"names = {SCHEMA_FILES!r}\n"
        "h.create_app(db='hb.db').close()\n"
        "print(json.dumps({'module': h.__file__, 'schemas': {name: h.read_schema(name) for name in names}}))\n"
    )
    result = run(installed, installed["python"], "-c", script)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert os.path.dirname(found["module"]) == installed["site"]
    for name, text in found["schemas"].items():
        assert not os.path.exists(os.path.join(installed["site"], name))  # no generic schema.sql in site-packages
        with open(os.path.join(installed["site"], "heartbeat_lite." + name), encoding="utf-8") as copy, \
                open(os.path.join(HERE, name), encoding="utf-8") as original:
            assert text == copy.read() == original.read()
    with contextlib.closing(sqlite3.connect(os.path.join(installed["cwd"], "hb.db"))) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION


@pytest.mark.slow
def test_the_readme_embedding_example_runs_outside_the_checkout(installed):
    example = os.path.join(installed["cwd"], "embedding_example.py")
    with open(example, "w", encoding="utf-8") as f:
        f.write(readme_python("## Embedding"))
    result = run(installed, installed["python"], example)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_the_heartbeat_lite_command_exits_with_mains_status(installed):
    command = os.path.join(installed["bin"], "heartbeat-lite")
    version = run(installed, command, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"heartbeat-lite {heartbeat_lite.__version__}")
    refused = run(installed, command, "--port", "0", "--db", os.path.join(installed["cwd"], "missing", "hb.db"))
    assert refused.returncode == heartbeat_lite.EXIT_CONFIG_ERROR
    assert "heartbeat-lite: error:" in refused.stderr


@pytest.mark.parametrize("layout", ["heartbeat_lite.{name}", "{name}"])  # as installed, as in a checkout
def test_the_module_reads_its_schemas_from_a_zip(tmp_path, layout):
    archive = str(tmp_path / "heartbeat_lite.zip")
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(os.path.join(HERE, "heartbeat_lite.py"), "heartbeat_lite.py")
        for name in SCHEMA_FILES:
            bundle.write(os.path.join(HERE, name), layout.format(name=name))
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import heartbeat_lite as h\n"
        "h.create_app(db='hb.db').close()\n"
        f"print(json.dumps({{'module': h.__file__, 'schemas': {{n: h.read_schema(n) for n in {SCHEMA_FILES!r}}}}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, archive], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert os.path.dirname(found["module"]) == archive
    for name, text in found["schemas"].items():
        with open(os.path.join(HERE, name), encoding="utf-8") as original:
            assert text == original.read()
    with contextlib.closing(sqlite3.connect(str(tmp_path / "hb.db"))) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION


def test_a_missing_schema_file_is_a_config_error_naming_where_it_was_looked_for():
    with pytest.raises(heartbeat_lite.ConfigError, match=r"cannot read the schema .*heartbeat_lite\.nothing\.sql "
                                                         r"or .*nothing\.sql"):
        heartbeat_lite.read_schema("nothing.sql")


###############################################################################
# The zipapp: python heartbeat-lite.pyz
###############################################################################


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    """``heartbeat-lite.pyz``, built by build_pyz.py."""
    return build_pyz.build(str(tmp_path_factory.mktemp("pyz") / "heartbeat-lite.pyz"))


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """The python of a venv with nothing installed (not even pip)."""
    python = new_venv(str(tmp_path_factory.mktemp("bare")))
    missing = subprocess.run([python, "-c", "import bottle"], capture_output=True, text=True, env=clean_env())
    assert "No module named 'bottle'" in missing.stderr  # else the test below proves nothing
    return python


@pytest.mark.slow
def test_the_pyz_serves_the_seeds_create_from_an_empty_directory(pyz, bare_python, tmp_path):
    cwd, log = tmp_path / "empty", tmp_path / "server.log"
    cwd.mkdir()
    with open(log, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen([bare_python, pyz, "--port", "0"], cwd=cwd, env=clean_env(),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert wait_until(lambda: "listening on " in log.read_text() or process.poll() is not None, timeout=60)
        assert process.poll() is None, log.read_text()
        base = log.read_text().split("listening on ")[1].split()[0]
        request = urllib.request.Request(base + "/api/v2/heartbeat", data=json.dumps(SEED_BODY).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": _basic("root", "root")}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            answer = json.loads(response.read())
        assert answer["name"] == "heartbeat created"
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                            answer["description"])
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    assert status == 0, log.read_text()  # a clean stop
    assert (cwd / "heartbeat_lite.db").is_file()  # the default database, in the current directory


@pytest.mark.slow
def test_the_pyz_embeds_through_sys_path(pyz, bare_python, tmp_path):
    script = (
        "import json, sys, urllib.request\n"
        f"sys.path.insert(0, {pyz!r})\n"
        "import bottle, heartbeat_lite\n"
        "service = heartbeat_lite.create_app(db=':memory:', users={'ci': 'secret'})\n"
        "with service, heartbeat_lite.serve(service, port=0) as url:\n"
        "    request = urllib.request.Request(url + '/api/v2/heartbeat', method='POST', data=sys.stdin.buffer.read(),\n"
        f"                                     headers={{'Authorization': {_basic('ci', 'secret')!r}}})\n"
        "    with urllib.request.urlopen(request, timeout=30) as response:\n"
        "        answer = json.loads(response.read())\n"
        "print(json.dumps({'files': [heartbeat_lite.__file__, bottle.__file__], 'answer': answer,\n"
        f"                  'schemas': {{name: heartbeat_lite.read_schema(name) for name in {SCHEMA_FILES!r}}}}}))\n"
    )
    result = subprocess.run([bare_python, "-c", script], input=json.dumps(SEED_BODY), cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [os.path.dirname(path) for path in found["files"]] == [pyz, pyz]
    assert found["answer"]["name"] == "heartbeat created"
    for name, text in found["schemas"].items():
        with open(os.path.join(HERE, name), encoding="utf-8") as original:
            assert text == original.read()


###############################################################################
# The lists that must agree
###############################################################################


def requirement_names(lines):
    """The distribution names of requirement lines, normalized (PEP 503)."""
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", line).group(0)).lower())
    return names


def test_the_run_time_dependencies_are_the_same_in_every_list():
    with open(os.path.join(HERE, "requirements.txt"), encoding="utf-8") as f:
        requirements = requirement_names(f)
    with open(os.path.join(HERE, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = requirement_names(re.findall(r'^\s+"([^"]+)",?$',
                                                 re.search(r"^dependencies = \[\n(.*?)^\]", f.read(),
                                                           re.M | re.S).group(1), re.M))
    with open(os.path.join(HERE, "heartbeat_lite.py"), encoding="utf-8") as f:
        header = requirement_names(json.loads(re.search(r"^# dependencies = (\[.*\])$", f.read(), re.M).group(1)))
    assert requirements == pyproject == header
    assert {"bottle", "waitress", "python-dateutil", "cronsim"} <= requirements


def test_every_list_requires_the_same_python():
    with open(os.path.join(HERE, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = re.search(r'^requires-python = "([^"]+)"$', f.read(), re.M).group(1)
    with open(os.path.join(HERE, "heartbeat_lite.py"), encoding="utf-8") as f:
        header = re.search(r'^# requires-python = "([^"]+)"$', f.read(), re.M).group(1)
    assert pyproject == header == ">=3.10"
