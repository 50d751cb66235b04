"""A Postgres cluster of the tests' own, which they may stop, crash and restart.

The shared server on 5432 serves other test runs and is never touched; this one
lives in a temporary directory, listens on a free loopback port and is removed
afterwards. Postgres refuses to run as root, so when the tests run as root
(as in CI) the server's commands run as the `postgres` OS user.
"""

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager

import pytest

from support import as_server_user, free_port, missing_server_user

POSTGRES_BIN = os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin")


def missing_requirement():
    """Why a private cluster cannot be made here, or None."""
    for tool in ("initdb", "pg_ctl"):
        if not os.access(os.path.join(POSTGRES_BIN, tool), os.X_OK):
            return f"Postgres server binaries not found in {POSTGRES_BIN} (set POSTGRES_BIN)"
    return missing_server_user("Postgres")


class PrivateCluster:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="todo-api-cluster-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "postgres.log")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as = as_server_user(self.root)
        os.chmod(self.root, 0o700)
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool, *args):
        subprocess.run(
            [os.path.join(POSTGRES_BIN, tool), *args],
            cwd=self.root,
            check=True,
            capture_output=True,
            timeout=60,
            **self._as,
        )

    def _pg_ctl(self, action, *args):
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=60"
        self._run("pg_ctl", action, "-D", self.data, "-l", self.log, "-w", "-t", "30", "-o", options, *args)

    def start(self):
        self._pg_ctl("start")

    def stop(self, mode="fast"):
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode="fast"):
        """Stop (`fast`: end sessions cleanly; `immediate`: crash, recovery on start) and start again."""
        self._pg_ctl("restart", "-m", mode)

    def remove(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running_cluster(needed_by):
    """A started PrivateCluster, removed afterwards; the test is skipped where one cannot run."""
    reason = missing_requirement()
    if reason:
        pytest.skip(f"{needed_by} a private Postgres cluster: {reason}")
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
