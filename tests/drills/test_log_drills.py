"""No log holds a session token, a part of one, or a value a client sent.

SQLAlchemy's errors do not list the parameters sent, and an unexpected database
error is logged by type only. A session lookup that fails on the server (it
waits behind a migration's lock past its statement timeout) leaves no token in
Postgres's own log either, directly and through PgBouncer.
Each drill prints its figures (run pytest with -s to see them).
"""

import contextlib
import json
import logging
import re
import socket
import time
import uuid

import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import InternalServerError

from drills.harness import ServerLog, Service, assert_no_secrets, unique_title
from support import SECRET, base_config
from support.pgbouncer import Pooler
from support.pgbouncer import missing_requirement as pooler_missing
from todo_api import create_app
from todo_api.auth.credentials import sign
from todo_api.db.connections import get_engine
from todo_api.db.token_digest import token_digest


@pytest.mark.backends("postgres", "sqlite")
def test_sqlalchemy_errors_do_not_list_the_parameters_sent(app, token):
    """Defence in depth: errors.py logs only an error's type, never its text.

    The text could not be made clean anyway: psycopg2 puts the values into the
    statement before sending it, so Postgres's own message may quote them.
    """
    with pytest.raises(DBAPIError) as raised:
        with get_engine(app).connect() as connection:
            connection.execute(text("SELECT id FROM no_such_table WHERE token = :token"), {"token": token})
    message = str(raised.value)
    assert "[SQL parameters hidden due to hide_parameters=True]" in message
    assert "[parameters:" not in message


@pytest.mark.postgres
def test_an_unexpected_database_error_is_a_500_whose_log_holds_no_value_sent(cluster, session_on, sql, caplog):
    caplog.set_level(logging.INFO)
    token = session_on()
    sql(
        "CREATE OR REPLACE FUNCTION drill_refuse() RETURNS trigger AS "
        "$$ BEGIN RAISE EXCEPTION 'refused: %', NEW.title; END $$ LANGUAGE plpgsql; "
        "CREATE OR REPLACE TRIGGER drill_refuse BEFORE INSERT ON task FOR EACH ROW EXECUTE FUNCTION drill_refuse()"
    )
    title = unique_title("refused")
    try:
        app = create_app(base_config(cluster.url))
        response = app.test_client().post(
            "/api/tasks", headers={"Authorization": f"Bearer {token}"}, json={"title": title}
        )
        get_engine(app).dispose()
    finally:
        sql("DROP TRIGGER drill_refuse ON task; DROP FUNCTION drill_refuse()")
    assert (response.status_code, response.get_json()) == (500, {"detail": InternalServerError.description})
    assert "unhandled error: InternalError" in caplog.text
    assert_no_secrets(caplog.text, [token], [title])


# -- The session lookup fails on the server ------------------------------------


def lookups_behind_a_migrations_lock(cluster, app, credentials):
    """Hold an ACCESS EXCLUSIVE lock on the session table, as a migration altering it would, while each
    credential makes a request (the session lookup waits for the lock until its statement timeout); then
    release it. Returns the responses."""
    locker = psycopg2.connect(cluster.url)
    try:
        with locker.cursor() as cursor:
            cursor.execute('LOCK TABLE "session" IN ACCESS EXCLUSIVE MODE')
        client = app.test_client()
        return [
            client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {credential}"})
            for credential in credentials
            for method, path, body in [("GET", "/api/tasks", None), ("POST", "/api/tasks", {"title": "waits"})]
        ]
    finally:
        locker.rollback()
        locker.close()


@pytest.mark.postgres
@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_a_session_lookup_cancelled_on_the_server_leaves_no_token_in_its_log(
    cluster, session_on, sql, issued_tokens, through, caplog
):
    """psycopg2 puts parameters into the statement text, and Postgres logs a failed statement whole
    (`log_min_error_statement = error`, the default): the lookup's text must hold only the token's digest."""
    caplog.set_level(logging.INFO)
    if through == "pgbouncer":
        reason = pooler_missing()
        if reason:
            pytest.skip(reason)
    token = session_on()
    signed = f"{token}.{sign(token, SECRET)}"
    digest = token_digest(token).hex()
    pooler = Pooler(cluster.url).start() if through == "pgbouncer" else None
    server_log = ServerLog(cluster.log)
    app = create_app(
        base_config(
            pooler.url(cluster.url) if pooler else cluster.url,
            BETTER_AUTH_SECRET=SECRET,
            DATABASE_STATEMENT_TIMEOUT_MS=200,
        )
    )
    try:
        started = time.monotonic()
        responses = lookups_behind_a_migrations_lock(cluster, app, [token, signed])
        waited = time.monotonic() - started
        assert [(r.status_code, r.get_json(), r.headers.get("Retry-After")) for r in responses] == [
            (503, {"detail": "Service temporarily unavailable"}, "5")
        ] * 4
        # The lock is gone: the same credentials are served again, by the same app.
        for credential in (token, signed):
            response = app.test_client().get("/api/tasks", headers={"Authorization": f"Bearer {credential}"})
            assert response.status_code == 200
        pooler_log = pooler.log_text() if pooler else ""
    finally:
        get_engine(app).dispose()
        if pooler:
            pooler.stop()
    assert sql("SELECT count(*) FROM task WHERE title = 'waits'") == [(0,)]

    logged = server_log.new_text()
    cancelled = logged.count("ERROR:  canceling statement due to statement timeout")
    statements = [entry for entry in server_log.entries(logged) if "STATEMENT:" in entry]
    assert cancelled == 4, logged[-3000:]
    assert len(statements) == 4, logged[-3000:]
    for entry in statements:
        assert "WHERE todo_api_token_digest(session.token) = " in entry, entry
        assert f"'\\x{digest}'::bytea" in entry, entry
    assert logged.count(digest) == logged.count(f"'\\x{digest}'::bytea") == 4
    for text_seen in (logged, pooler_log, caplog.text):
        assert signed not in text_seen
        assert_no_secrets(text_seen, [token, signed.partition(".")[2]], [])
    with open(cluster.log, errors="replace") as log:  # nor any token of any drill, anywhere in the server log
        assert_no_secrets(log.read(), issued_tokens, [])
    print(
        f"\n[drill: session lookup cancelled, {through}] 4 requests behind an ACCESS EXCLUSIVE lock: 503 x 4 in "
        f"{waited:.2f} s; server log: {cancelled} statement timeouts, digest only as a bytea literal, no token"
    )


# -- Requests gunicorn cannot parse --------------------------------------------

# Malformed requests, each carrying a secret of its own (a token or a search word) where a careless log would
# quote it; `{secret}` is replaced by it, `{token}` by a live session's token. Each with the answer it gets.
MALFORMED = [
    ("a header line without a colon", b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nBearer {secret}\r\n\r\n", 400),
    ("Expect: <token>", b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nExpect: {secret}\r\n\r\n", 417),
    ("a search word with a DEL", b"GET /api/tasks/search?keyword={secret}\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (
        "an over-long header",
        b"GET /api/tasks HTTP/1.1\r\nAuthorization: Bearer {secret}" + b"x" * 9000 + b"\r\n\r\n",
        431,
    ),
    ("a bad request line", b"GET /api/tasks?keyword={secret} HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    ("a bad HTTP version", b"GET /api/tasks?keyword={secret} HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ("a URI too long", b"GET /api/tasks/search?keyword={secret}" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
    ("a bad method", b"{secret}! /api/tasks HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("a bad header name", b"GET /api/tasks HTTP/1.1\r\n{secret}(: x\r\n\r\n", 400),
    ("a control character in a header", b"GET /api/tasks HTTP/1.1\r\nAuthorization: Bearer {secret}\x01\r\n\r\n", 400),
    ("a folded header line", b"GET /api/tasks HTTP/1.1\r\nX-Note: a\r\n {secret}\r\n\r\n", 400),
    ("an unknown transfer coding", b"POST /api/tasks HTTP/1.1\r\nTransfer-Encoding: {secret}\r\n\r\n", 501),
    (
        "a bad chunk size in a live session's body",
        b"POST /api/tasks HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n{secret}\r\n",
        400,
    ),
    (
        "a bad chunk terminator in a live session's body",
        b"POST /api/tasks HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\n{secret}\r\n0\r\n\r\n",
        400,
    ),
]


def exchange(port, message):
    """Send `message` on a connection of its own; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(message)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


@pytest.mark.postgres
def test_requests_gunicorn_cannot_parse_leave_no_secret_in_its_log(cluster, session_on, tmp_path):
    token = session_on()
    service = Service(cluster.url, tmp_path / "gunicorn.log", env={"LOG_LEVEL": "DEBUG"})
    secrets, answers = [], []
    try:
        for _, template, _ in MALFORMED:
            secret = f"s{uuid.uuid4().hex}"  # not a hexadecimal number: not a chunk size
            secrets.append(secret)
            message = template.replace(b"{secret}", secret.encode()).replace(b"{token}", token.encode())
            answers.append(exchange(service.port, message))
        time.sleep(0.3)  # log lines are written after the answers
    finally:
        service.stop()
    logged = service.output()
    statuses = [int(answer.split(b" ", 2)[1]) for answer in answers]
    assert statuses == [status for _, _, status in MALFORMED]
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"\r\nContent-Type: application/json\r\n" in head, answer
        assert set(json.loads(body)) == {"detail"}
    for (case, _, _), secret in zip(MALFORMED, secrets, strict=True):
        assert secret not in logged, f"{case}: the secret is in the log"
    assert_no_secrets(logged, [token], [])
    invalid = re.findall(r"Invalid request from ip=127\.0\.0\.1: (\w+)", logged)
    print(f"\n[drill: {len(MALFORMED)} malformed requests] answers {statuses}; gunicorn logged {invalid}")
    assert len(invalid) == 12
