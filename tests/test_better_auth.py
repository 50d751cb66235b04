"""The real Better Auth signs users in; todo-api accepts its sessions.

tests/betterauth/ is a small Node project running Better Auth (the version
pinned in its package-lock.json) with email and password sign-in and the bearer
plugin, on a Postgres database of its own whose `user`, `session`, `account` and
`verification` tables come from Better Auth's own migrations. todo-api's
migrations run on the same database, and the app shares Better Auth's secret.
Users sign up and in over HTTP; todo-api must accept every form of credential
Better Auth hands out, see the same user id, and refuse each form on the very
next request after Better Auth signs the session out.

The Node modules are installed with `npm ci` on the first run (and again when
the lock file changes); without `node` and `npm` these tests are skipped.
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from support import ADMIN_URL, SECRET, base_config, free_port, throwaway_database
from todo_api import create_app
from todo_api.db.connections import get_engine
from todo_api.db.engine import normalize_url
from todo_api.db.migrate import create_schema

PROJECT = Path(__file__).parent / "betterauth"
INSTALL_STAMP = PROJECT / "node_modules" / ".installed-lock-sha256"
COOKIE_NAME = "better-auth.session_token"
PASSWORD = "correct-horse-battery-staple"
START_TIMEOUT = 30
NOT_AUTHENTICATED = {"detail": "Not authenticated"}

pytestmark = [pytest.mark.postgres, pytest.mark.node]


def lock_digest():
    return hashlib.sha256((PROJECT / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def node():
    """The `node` binary, with tests/betterauth's modules installed once per lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed to run the real Better Auth (tests/betterauth/)")
    if INSTALL_STAMP.exists() and INSTALL_STAMP.read_text() == lock_digest():
        return node
    # npm retries a failed fetch twice; a shorter back-off makes an unreachable registry fail in ~20 s, not ~70 s.
    command = [npm, "ci", "--no-audit", "--no-fund", "--fetch-retry-maxtimeout=10000"]
    try:
        result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("`npm ci` in tests/betterauth took over 300 s; is the npm registry reachable?", pytrace=False)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[:20])
        pytest.fail(
            f"`npm ci` in tests/betterauth failed (exit {result.returncode}); is the npm registry reachable?\n{output}",
            pytrace=False,
        )
    INSTALL_STAMP.write_text(lock_digest())
    return node


@pytest.fixture(scope="module")
def database_url():
    """A fresh Postgres database for Better Auth and todo-api together, dropped afterwards."""
    with throwaway_database(ADMIN_URL, "todo_api_better_auth") as url:
        yield url


class BetterAuth:
    """Better Auth's HTTP API, called the way a browser on its own origin would."""

    def __init__(self, base_url):
        self.base_url = base_url

    def post(self, path, body=None, headers=None):
        """(status, response headers, JSON body) of a POST to /api/auth/<path>."""
        request = urllib.request.Request(
            f"{self.base_url}/api/auth/{path}",
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json", "Origin": self.base_url, **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.headers, json.loads(error.read() or b"null")


@pytest.fixture(scope="module")
def better_auth(node, database_url, tmp_path_factory):
    """Better Auth's server (tests/betterauth/server.mjs) on a free port; its tables made by its migrations."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("better-auth") / "server.log"
    env = {**os.environ, "DATABASE_URL": database_url, "BETTER_AUTH_SECRET": SECRET, "PORT": str(port)}
    with open(log_path, "w") as log:
        server = subprocess.Popen([node, "server.mjs"], cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "ready http://" not in log_path.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Better Auth did not start:\n{log_path.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.05)
        yield BetterAuth(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def todo(better_auth, database_url):
    """todo-api's test client on Better Auth's database (our migrations, no auth tables of ours), same secret."""
    app = create_app(base_config(database_url, BETTER_AUTH_SECRET=SECRET))
    create_schema(get_engine(app), app.config, with_auth_tables=False)
    # No cookie jar: each request carries exactly the headers a test gives it (with
    # a jar, Werkzeug would drop a Cookie header given by hand).
    yield app.test_client(use_cookies=False)
    get_engine(app).dispose()


@dataclass
class SignedIn:
    """One Better Auth session, in each form a client may hold it, as request headers."""

    user_id: str
    raw_bearer: dict
    signed_bearer: dict
    cookie: dict

    def forms(self):
        return {"raw bearer": self.raw_bearer, "signed bearer": self.signed_bearer, "cookie": self.cookie}


def session_cookie(headers):
    for set_cookie in headers.get_all("Set-Cookie"):
        name, _, rest = set_cookie.partition("=")
        if name == COOKIE_NAME:
            return rest.partition(";")[0]
    raise AssertionError(f"no {COOKIE_NAME} cookie in {headers.get_all('Set-Cookie')}")


@pytest.fixture
def signed_in(better_auth, todo):
    """A new user signed up and then signed in through Better Auth."""
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    status, _, signed_up = better_auth.post("sign-up/email", {"email": email, "password": PASSWORD, "name": "User"})
    assert status == 200, signed_up
    status, headers, body = better_auth.post("sign-in/email", {"email": email, "password": PASSWORD})
    assert status == 200, body
    assert body["user"]["id"] == signed_up["user"]["id"]
    token, signed, cookie = body["token"], headers["set-auth-token"], session_cookie(headers)
    # The bearer plugin's header is the cookie's value before URL encoding: <token>.<base64 signature>.
    assert signed.partition(".")[0] == token
    assert urllib.parse.unquote(cookie) == signed
    return SignedIn(
        user_id=body["user"]["id"],
        raw_bearer={"Authorization": f"Bearer {token}"},
        signed_bearer={"Authorization": f"Bearer {signed}"},
        cookie={"Cookie": f"{COOKIE_NAME}={cookie}"},
    )


def test_better_auth_made_its_own_tables_beside_ours(todo, database_url):
    engine = create_engine(normalize_url(database_url))
    with engine.connect() as connection:
        tables = connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
        assert sorted(tables) == [
            "account",
            "alembic_version",
            "idempotency_key",
            "push_delivery",
            "push_subscription",
            "session",
            "task",
            "task_change",
            "task_change_counter",
            "user",
            "user_settings",
            "verification",
        ]
        indexes = connection.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'session' AND indexdef LIKE '%digest%'")
        ).all()
        assert indexes == [
            (
                "ix_session_token_digest",
                "CREATE INDEX ix_session_token_digest ON public.session USING btree (todo_api_token_digest(token))",
            )
        ]
    engine.dispose()


@pytest.mark.parametrize("form", ["raw bearer", "signed bearer", "cookie"])
def test_every_credential_form_is_accepted_as_better_auths_user(todo, signed_in, form):
    headers = signed_in.forms()[form]
    listed = todo.get("/api/tasks", headers=headers)
    assert listed.status_code == 200
    assert listed.get_json() == {"data": []}

    created = todo.post("/api/tasks", json={"title": f"by {form}"}, headers=headers)
    assert created.status_code == 200
    task = created.get_json()["data"]
    assert task["user_id"] == signed_in.user_id
    listed = todo.get("/api/tasks", headers=headers).get_json()["data"]
    assert [(t["id"], t["title"]) for t in listed] == [(task["id"], f"by {form}")]


def test_a_task_made_with_one_form_is_the_same_task_in_the_others(todo, signed_in):
    created = todo.post("/api/tasks", json={"title": "shared"}, headers=signed_in.cookie)
    assert created.status_code == 200
    task = created.get_json()["data"]

    for headers in (signed_in.raw_bearer, signed_in.signed_bearer):
        read = todo.get(f"/api/tasks/{task['id']}", headers=headers)
        assert read.status_code == 200
        assert read.get_json()["data"] == task

    updated = todo.put(f"/api/tasks/{task['id']}", json={"title": "renamed"}, headers=signed_in.signed_bearer)
    assert updated.status_code == 200
    read = todo.get(f"/api/tasks/{task['id']}", headers=signed_in.cookie)
    assert read.get_json()["data"]["title"] == "renamed"
    assert read.get_json()["data"]["user_id"] == signed_in.user_id


def test_another_better_auth_user_cannot_see_the_task(todo, better_auth, signed_in):
    task = todo.post("/api/tasks", json={"title": "private"}, headers=signed_in.raw_bearer).get_json()["data"]
    stranger = _sign_up(better_auth)
    response = todo.get(f"/api/tasks/{task['id']}", headers=stranger)
    assert response.status_code == 404
    assert response.get_json() == {"detail": "Task not found"}
    assert todo.get("/api/tasks", headers=stranger).get_json() == {"data": []}


def _sign_up(better_auth):
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    status, headers, body = better_auth.post("sign-up/email", {"email": email, "password": PASSWORD, "name": "Other"})
    assert status == 200, body
    return {"Authorization": f"Bearer {headers['set-auth-token']}"}


def test_a_form_post_with_better_auths_cookie_is_refused(todo, signed_in):
    """The browser sends the cookie cross-site too; a form cannot send application/json."""
    forged = todo.post("/api/tasks", data={"title": "forged"}, headers=signed_in.cookie)
    assert forged.status_code == 415
    assert todo.get("/api/tasks", headers=signed_in.cookie).get_json() == {"data": []}


@pytest.mark.parametrize("signed_out_with", ["raw bearer", "signed bearer", "cookie"])
def test_signing_out_through_better_auth_refuses_every_form_on_the_next_request(
    todo, better_auth, signed_in, signed_out_with
):
    forms = signed_in.forms()
    for headers in forms.values():
        assert todo.get("/api/tasks", headers=headers).status_code == 200

    status, _, body = better_auth.post("sign-out", headers=forms[signed_out_with])
    assert (status, body) == (200, {"success": True})

    for headers in forms.values():
        response = todo.get("/api/tasks", headers=headers)
        assert response.status_code == 401
        assert response.get_json() == NOT_AUTHENTICATED
