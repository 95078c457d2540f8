"""The embedded Postgres and Redis: lifecycle, sharing, crash recovery (real servers, no mocks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from server.embedded import EmbeddedServices, EmbeddedUrls, stop_orphans
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(service_dir: Path) -> Iterator[Path]:
    path = service_dir / "data"
    yield path
    stop_orphans(path)
    assert _server_pids(path) == (set(), set())


def _server_pids(data_dir: Path) -> tuple[set[int], set[int]]:
    """(postgres postmasters, redis servers) running from ``data_dir``, zombies excluded."""
    pgdata, redis_dir = str(data_dir / "postgres"), data_dir / "redis"
    postgres, redis_servers = set(), set()
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if proc.info["name"] == "postgres" and pgdata in (proc.info["cmdline"] or []):
            postgres.add(proc.pid)
        if proc.info["name"] == "redis-server":
            try:
                if Path(proc.cwd()) == redis_dir:
                    redis_servers.add(proc.pid)
            except psutil.Error:
                pass
    return postgres, redis_servers


def _wait_gone(data_dir: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _server_pids(data_dir) != (set(), set()):
        assert time.monotonic() < deadline, f"servers still running: {_server_pids(data_dir)}"
        time.sleep(0.02)


def _query(urls: EmbeddedUrls, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(urls.libpq_url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def _redis(urls: EmbeddedUrls) -> redis.Redis:
    return redis.Redis.from_url(urls.redis_url, decode_responses=True)


HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import psycopg, redis
    from server.embedded import EmbeddedServices
    urls = EmbeddedServices(Path(sys.argv[1])).start()
    with psycopg.connect(urls.libpq_url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(1)")  # concurrent CREATE IF NOT EXISTS races
        conn.execute("CREATE TABLE IF NOT EXISTS marks (v text)")
        conn.execute("INSERT INTO marks VALUES (%s)", (sys.argv[2],))
    redis.Redis.from_url(urls.redis_url).set("mark", sys.argv[2])
    print(json.dumps({"database_url": urls.database_url, "redis_url": urls.redis_url}), flush=True)
    if sys.argv[3] == "hold":
        time.sleep(600)
    """
)


def _run_holder(data_dir: Path, mark: str, mode: str) -> tuple[subprocess.Popen[str], EmbeddedUrls]:
    """A separate process that starts the services, writes ``mark``, then holds or exits."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir), mark, mode],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"holder failed (exit {proc.wait()})"
    return proc, EmbeddedUrls(**json.loads(line))


def test_start_serves_real_postgres_and_redis_and_stop_leaves_nothing(data_dir: Path) -> None:
    services = EmbeddedServices(data_dir)
    urls = services.start()
    assert services.start() is urls  # idempotent
    assert urls.database_url.startswith("postgresql+psycopg://postgres:@/postgres?host=/")
    assert urls.redis_url == f"unix://{data_dir / 'redis' / 'redis.sock'}"
    assert _query(urls, "SELECT 1 + 1") == [(2,)]
    client = _redis(urls)
    assert client.set("k", "v") and client.get("k") == "v"
    assert client.config_get("append*") == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "appendfilename": "appendonly.aof",
    }
    client.close()
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert (data_dir / "redis" / "appendonly.aof").exists()

    # Stopping is about 20 ms when idle, mostly Postgres' shutdown checkpoint, which a busy
    # disk slows down as much as the checkpoint timed here. A stop that waited for a signal's
    # timeout before escalating would take 5 s or more.
    with psycopg.connect(urls.libpq_url, autocommit=True) as conn:
        began = time.perf_counter()
        conn.execute("CHECKPOINT")
        checkpoint = time.perf_counter() - began
    began = time.perf_counter()
    services.stop()
    stopped = time.perf_counter() - began
    assert stopped < 1.0 + 2 * checkpoint, f"stop took {stopped:.2f} s ({checkpoint=:.2f} s)"
    assert _server_pids(data_dir) == (set(), set())
    services.stop()  # idempotent

    again = services.start()  # a stopped object can start again; data survived
    assert _redis(again).get("k") == "v"
    services.stop()
    assert _server_pids(data_dir) == (set(), set())


def test_second_holder_reuses_and_last_holder_stops(data_dir: Path) -> None:
    first, second = EmbeddedServices(data_dir), EmbeddedServices(data_dir)
    urls = first.start()
    pids = _server_pids(data_dir)
    assert len(pids[0]) == 1 and len(pids[1]) == 1
    assert second.start() == urls
    assert _server_pids(data_dir) == pids  # reused, nothing new started

    first.stop()
    assert _server_pids(data_dir) == pids  # the second holder still uses them
    assert _query(urls, "SELECT 42") == [(42,)]
    assert _redis(urls).ping()

    second.stop()
    assert _server_pids(data_dir) == (set(), set())


def test_start_after_holder_sigkill_reuses_servers_and_prunes_it(data_dir: Path) -> None:
    holder, urls = _run_holder(data_dir, "before-kill", "hold")
    pids = _server_pids(data_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert _server_pids(data_dir) == pids  # the servers outlive a killed holder

    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import psycopg, redis
        from server.embedded import EmbeddedServices
        with EmbeddedServices(Path(sys.argv[1])) as services:
            urls = services.start()
            with psycopg.connect(urls.libpq_url) as conn:
                print(conn.execute("SELECT v FROM marks").fetchone()[0])
            print(redis.Redis.from_url(urls.redis_url).get("mark").decode())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["before-kill", "before-kill"]
    # the dead holder was pruned, so the new process was the last holder and stopped both
    assert _server_pids(data_dir) == (set(), set())
    with EmbeddedServices(data_dir) as again:
        assert again.start() == urls  # same URLs next time


def test_start_after_servers_were_killed_recovers_committed_data(data_dir: Path) -> None:
    holder, _ = _run_holder(data_dir, "durable", "hold")
    # appendfsync everysec: Redis may hold a write back while an fsync is slow (a busy disk),
    # so wait until the mark is in the append-only file rather than for a fixed second.
    aof = data_dir / "redis" / "appendonly.aof"
    wait_for(lambda: b"durable" in aof.read_bytes(), 10, "the mark in Redis' append-only file")
    (postmaster,), (redis_server,) = _server_pids(data_dir)
    for pid in (holder.pid, postmaster, redis_server):
        os.kill(pid, signal.SIGKILL)
    holder.wait()
    _wait_gone(data_dir)
    assert (data_dir / "postgres" / "postmaster.pid").exists()  # stale lock file left behind

    with EmbeddedServices(data_dir) as services:
        urls = services.start()
        assert _query(urls, "SELECT v FROM marks") == [("durable",)]
        assert _redis(urls).get("mark") == "durable"
    assert _server_pids(data_dir) == (set(), set())


def test_holder_exiting_without_stop_stops_the_servers(data_dir: Path) -> None:
    holder, _ = _run_holder(data_dir, "x", "exit")
    assert holder.wait(timeout=30) == 0
    assert _server_pids(data_dir) == (set(), set())


def test_stop_orphans_stops_servers_of_a_killed_holder(data_dir: Path, tmp_path: Path) -> None:
    holder, _ = _run_holder(data_dir, "x", "hold")
    holder.kill()
    holder.wait()
    assert _server_pids(data_dir) != (set(), set())
    stop_orphans(data_dir)
    assert _server_pids(data_dir) == (set(), set())
    stop_orphans(tmp_path / "missing")  # no data directory: nothing to do


def test_long_data_dir_moves_sockets_to_a_short_path(service_dir: Path) -> None:
    data_dir = service_dir / ("d" * 120) / "data"
    try:
        with EmbeddedServices(data_dir) as services:
            urls = services.start()
            redis_socket = urls.redis_url.removeprefix("unix://")
            assert len(redis_socket) <= 107
            assert not redis_socket.startswith(str(data_dir))
            assert str(data_dir) not in urls.database_url
            assert _query(urls, "SELECT 7") == [(7,)]
            assert _redis(urls).ping()
        assert _server_pids(data_dir) == (set(), set())
        assert not Path(redis_socket).parent.exists()  # the short socket directory is removed
    finally:
        stop_orphans(data_dir)


def test_processes_starting_at_once_share_one_pair_of_servers(data_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(data_dir), f"p{i}", "exit"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for i in range(3)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1  # the same URLs for everyone
    assert _server_pids(data_dir) == (set(), set())  # the last one out stopped them
    with EmbeddedServices(data_dir) as services:
        marks = _query(services.start(), "SELECT v FROM marks ORDER BY v")
    assert marks == [("p0",), ("p1",), ("p2",)]
