"""Squid Mesh installed as a user installs it, following the README's "Installing the SDK in
your own project": a fresh virtualenv, `pip install` of the project (not editable), and, from a
project directory outside the repository, the installed `squidmesh` command migrating and
serving with its embedded Postgres and Redis, the README's worker module (examples/shop.py)
run with `python shop.py` and with `squidmesh worker shop`, and runs started through it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from google.protobuf import json_format
from squidmesh.v1 import run_pb2

from server.embedded import stop_orphans
from tests.e2e.conftest import Cluster
from tests.support import REPO, child_env

PIP = ("-m", "pip", "--disable-pip-version-check")


def _run(
    args: Sequence[str | Path],
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def _copy_source(destination: Path) -> Path:
    """The repository's files as a clone would have them (tracked or new, not ignored), so
    nothing built or cached in the working tree (build/, *.egg-info) gets into the wheel."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():  # listed but deleted in the working tree: not copied
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _install(venv: Path, source: Path, wheelhouse: Path) -> None:
    """`pip install <source>` into `venv`, the dependencies from `wheelhouse`. pip's own cache
    may keep nothing (it kept nothing on the 2-core machine, whose package index sends no cache
    headers), so the dependencies are kept as wheels in pytest's cache: only the first run, or
    one after a dependency changed, downloads them."""
    python = str(venv / "bin" / "python")
    offline = [python, *PIP, "install", "--no-index", "--find-links", str(wheelhouse), str(source)]
    if _run(offline).returncode == 0:
        return
    downloaded = _run([python, *PIP, "download", "--dest", str(wheelhouse), str(source)])
    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    installed = _run(offline)
    assert installed.returncode == 0, installed.stdout + installed.stderr


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """A fresh virtualenv with squidmesh installed from a copy of the repository."""
    root = tmp_path_factory.mktemp("install")
    cache = getattr(pytestconfig, "cache", None)  # None with -p no:cacheprovider
    wheelhouse = cache.mkdir("wheelhouse") if cache is not None else root / "wheelhouse"
    began = time.monotonic()
    venv = root / "venv"
    created = _run([sys.executable, "-m", "venv", venv])
    assert created.returncode == 0, created.stderr
    _install(venv, _copy_source(root / "squidmesh"), wheelhouse)
    print(f"measured: a fresh virtualenv with squidmesh in {time.monotonic() - began:.1f}s")
    return venv


@pytest.fixture
def project(service_dir: Path) -> Iterator[Path]:
    """A user's project directory, outside the repository, holding the README's worker (its
    embedded services keep their data in it, hence service_dir)."""
    project = service_dir / "my-project"
    project.mkdir()
    shutil.copy(REPO / "examples" / "shop.py", project / "shop.py")
    yield project
    stop_orphans(project / "data")  # whatever happened, no embedded server outlives the test


def test_the_readme_commands_work_in_a_fresh_virtualenv(
    cluster: Cluster, venv: Path, project: Path
) -> None:
    bin = venv / "bin"
    cluster.env = {"SQUIDMESH_LOG_LEVEL": "info"}  # embedded Postgres and Redis, as the README

    # What that virtualenv imports is the installed copy, not the repository.
    located = _run(
        [
            bin / "python",
            "-c",
            "import json, server, worker_sdk, squidmesh.v1 as v1, server.store.migrate as m;"
            "print(json.dumps([server.__file__, worker_sdk.__file__, v1.__file__,"
            " str(m.MIGRATIONS_DIR)]))",
        ],
        cwd=project,
        env=child_env({}, repo_on_path=False),
    )
    assert located.returncode == 0, located.stderr
    for path in json.loads(located.stdout):
        assert Path(path).is_relative_to(venv), path

    migrated = _run([bin / "squidmesh", "migrate"], project, child_env({}, repo_on_path=False))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "database is at the latest schema" in migrated.stdout

    server = cluster.start_server(command=[bin / "squidmesh", "serve"], cwd=project)
    address = {"SQUIDMESH_ADDRESS": server.address}  # instead of the default 127.0.0.1:50051
    shop = cluster.start_process("shop", [bin / "python", "shop.py"], address, cwd=project)
    with cluster.client() as client:
        cluster.wait_registered(client, "order")
    payload = json.dumps({"order_id": "A-1", "sku": "tea"})
    started = _run(
        [bin / "squidmesh", "runs", "start", "order", "--payload", payload, "--watch"],
        project,
        child_env(address, repo_on_path=False),
        timeout=120,
    )
    assert started.returncode == 0, started.stdout + started.stderr  # 0: the run completed
    assert shop.terminate() == 0  # SIGTERM: drains, then exits

    # The other way to run it: `squidmesh worker shop` from the directory that holds it.
    cluster.start_process("shop-worker", [bin / "squidmesh", "worker", "shop"], address, project)
    with cluster.client() as client:
        express = client.start_run("order", {"order_id": "A-2", "sku": "tea", "express": True})
        client.wait_for_run(express.id, timeout=60)
        runs = {
            json_format.MessageToDict(r.payload)["order_id"]: client.get_run(r.id)
            for r in client.iter_runs(workflow="order", view="full")
        }

    assert sorted(runs) == ["A-1", "A-2"]
    for order_id, shipped_by in (("A-1", "ship_standard"), ("A-2", "ship_express")):
        run = runs[order_id]
        assert run.status == run_pb2.RUN_STATUS_COMPLETED, run
        assert [s.name for s in run.steps] == ["reserve", "charge", shipped_by]
        context = json_format.MessageToDict(run.context)
        assert context["stock"] == {"reserved": 1, "warehouse": "ams-1"}
        assert context["charge"]["amount"] == 10
    assert json_format.MessageToDict(runs["A-2"].context)["shipment"] == {"carrier": "courier"}
