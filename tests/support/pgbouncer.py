"""A PgBouncer of the tests' own, in transaction mode, like Neon's pooled connection string.

Its configuration is what Neon's pooler has, nothing more: transaction pooling,
a wildcard database entry pointing at one Postgres server, the default
startup-parameter handling (only `extra_float_digits` is ignored), and a small
pool so that server connections really are shared between clients. It runs in
a temporary directory and listens on a free loopback port. PgBouncer refuses to
run as root, so when the tests run as root (as in CI) it runs as the `postgres`
OS user.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

from sqlalchemy.engine import make_url

from support import SERVER_USER, as_server_user, free_port, missing_server_user

PGBOUNCER = os.environ.get("PGBOUNCER") or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
START_TIMEOUT = 10


def missing_requirement():
    """Why a PgBouncer cannot be started here, or None."""
    if not os.access(PGBOUNCER, os.X_OK):
        return "pgbouncer is not installed (apt-get install pgbouncer)"
    return missing_server_user("pgbouncer")


def _quoted(value):
    return '"' + value.replace('"', '""') + '"'


class Pooler:
    """PgBouncer in front of the Postgres server of `server_url` (any database on it)."""

    def __init__(self, server_url, pool_size=4):
        server = make_url(server_url)
        self.root = tempfile.mkdtemp(prefix="todo-api-pgbouncer-")
        self.log = os.path.join(self.root, "pgbouncer.log")
        self.port = free_port()
        config = os.path.join(self.root, "pgbouncer.ini")
        users = os.path.join(self.root, "userlist.txt")
        with open(config, "w") as file:
            file.write(
                "[databases]\n"
                f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "auth_type = trust\n"
                f"auth_file = {users}\n"
                "pool_mode = transaction\n"
                f"default_pool_size = {pool_size}\n"
                "max_client_conn = 500\n"
                "ignore_startup_parameters = extra_float_digits\n"
                f"logfile = {self.log}\n"
            )
        with open(users, "w") as file:
            # trust: no client authentication, but the user must be listed; its password logs in to the server.
            file.write(f"{_quoted(server.username or SERVER_USER)} {_quoted(server.password or '')}\n")
        self._as = as_server_user(self.root, config, users)
        os.chmod(self.root, 0o700)
        self._config = config
        self.process = None

    def url(self, database_url):
        """The same database as `database_url`, reached through this pooler."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def start(self):
        self.process = subprocess.Popen(
            [PGBOUNCER, self._config],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._as,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start:\n{self.log_text()[-3000:]}") from None
                time.sleep(0.05)

    def log_text(self):
        try:
            with open(self.log) as file:
                return file.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        """Stop at once (SIGTERM: immediate shutdown) and remove the directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
