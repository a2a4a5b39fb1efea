"""A throwaway PostgreSQL cluster for tests and benchmarks (Debian's `postgresql` package).

    with PgServer() as pg:                       # initdb + pg_ctl start on a free loopback port
        url = pg.create_database("t1")           # postgresql://simsock:<pw>@127.0.0.1:<port>/t1
        ...                                      # stop() removes the cluster

The cluster lives in a fresh temporary directory, listens on 127.0.0.1 only, and has one
superuser `simsock` with a random password (scram-sha-256), so URLs carry user and
password like a real deployment's. PostgreSQL refuses to run as root: as root the
server runs as the `postgres` system user (the Debian package creates it) through
`runuser`; the temporary directory is handed to that user.

`fast=True` (the default) turns off fsync and synchronous commits: a test cluster
that is thrown away needs no durability. Benchmarks say which setting they used
(`settings={"synchronous_commit": "off"}` adds server settings).

`PgServer.unavailable()` says why a cluster cannot be started here (None if it can).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

RUN_AS = "postgres"
USER = "simsock"


def pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<ver>/bin with initdb and pg_ctl, or initdb's dir on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    exe = shutil.which("initdb")
    return Path(os.path.realpath(exe)).parent if exe else None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PgServerError(RuntimeError):
    pass


class PgServer:
    def __init__(self, *, port: int | None = None, fast: bool = True, max_connections: int = 200,
                 settings: dict[str, str] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.fast = fast
        self.max_connections = max_connections
        self.settings = dict(settings or {})  # extra `-c name=value` server settings
        self.password = secrets.token_hex(12)
        self.dir: Path | None = None
        self._bindir = pg_bindir()
        self._as_root = os.geteuid() == 0

    @staticmethod
    def unavailable() -> str | None:
        """Why no cluster can be started here, or None."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install 'psycopg[binary]')"
        if pg_bindir() is None:
            return "PostgreSQL server binaries not found (apt-get install -y postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(RUN_AS)
            except KeyError:
                return f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as"
            if shutil.which("runuser") is None:
                return "running as root and runuser is missing"
        return None

    # --- plumbing ------------------------------------------------------------------------

    def _run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        argv = [str(self._bindir / cmd[0]), *cmd[1:]]
        if self._as_root:
            argv = ["runuser", "-u", RUN_AS, "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
        if r.returncode != 0:
            raise PgServerError(f"{cmd[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
        return r

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@{self.host}:{self.port}/{database}"

    # --- start / stop --------------------------------------------------------------------

    def start(self, timeout: float = 60) -> PgServer:
        why = self.unavailable()
        if why:
            raise PgServerError(why)
        self.dir = Path(tempfile.mkdtemp(prefix="simsock-pg-"))
        data, pwfile, sockdir = self.dir / "data", self.dir / "pw", self.dir / "sock"
        sockdir.mkdir()
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            pw = pwd.getpwnam(RUN_AS)
            for p in (self.dir, sockdir, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        try:
            self._run("initdb", "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                      "--auth-local=trust", "-E", "UTF8", "--no-instructions", "--nosync", timeout=timeout)
            opts = [f"-c listen_addresses={self.host}", f"-p {self.port}", f"-c unix_socket_directories={sockdir}",
                    f"-c max_connections={self.max_connections}", "-c shared_buffers=64MB"]
            if self.fast:
                opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            opts += [f"-c {k}={v}" for k, v in self.settings.items()]
            self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", str(int(timeout)),
                      "-o", " ".join(opts), "start", timeout=timeout + 5)
        except BaseException:
            self.stop()
            raise
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PgServerError(f"PostgreSQL on port {self.port} did not come up: {exc}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(PgServerError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- databases -----------------------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE (a fresh one, from template0) and return its URL."""
        import psycopg

        name = name or f"t_{secrets.token_hex(6)}"
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad database name {name!r}")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:  # python -m cloud_stub.pgserver: a cluster to try things by hand
    with PgServer(fast=False) as pg:
        print(pg.create_database("simsock"), flush=True)
        print("Ctrl-C stops and removes it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
