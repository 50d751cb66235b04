"""Drills: slow and idle clients against gunicorn, started as the Procfile starts it, on the test database.

The worker (gunicorn_worker.BufferingThreadWorker) reads requests and sends responses in its main thread, so
clients that connect and say nothing, send a head or a body a byte at a time, or never read their response hold
no thread: the service answers everyone else as fast as ever, and each slow client is cut off at its deadline.
Each drill prints its figures (run pytest with -s to see them). All traffic stays on 127.0.0.x.
"""

import errno
import http.client
import json
import re
import select
import socket
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert

import gunicorn_worker
from drills.harness import Service
from gunicorn_worker import RequestFraming, Verdict
from support import base_config, truncate_postgres, user_id_of
from todo_api import create_app
from todo_api.cli import create_user_session
from todo_api.config import from_environment
from todo_api.db.connections import get_engine
from todo_api.db.tables import task

# Every request of a well-behaved client answers within this, however many slow clients are connected.
LATENCY_BOUND = 0.1
# The deadlines of the strict service (seconds), and how late a deadline may be acted on.
STRICT_TIMEOUT = 2
SLACK = 1.0
PER_ADDRESS_CAP = 20
# Tasks of 10,000-character descriptions for the user whose list the slow readers ask for: about 6 MB, more than
# loopback's socket buffers hold (so their responses stall) and less than the worker buffers.
BULK_TASKS = 600
ACCOUNTS = ("reader", "bulk")
# The bulk user's whole list in one response (about 6 MB), over the default cap on a page's bytes.
WHOLE_LIST = {"RESPONSE_MAX_BYTES": str(8 * 1024 * 1024)}
TOO_LARGE = {"detail": "The data value transmitted exceeds the capacity limit."}
TIMED_OUT_BODY = (
    b'{"detail":"The server closed the network connection because the browser didn\'t finish the request within '
    b'the specified time."}'
)
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(TIMED_OUT_BODY), TIMED_OUT_BODY)
)


def get(port, path, token=None, timeout=5):
    """One request on a connection of its own: (status, body, seconds)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        body = response.read()
        return response.status, body, time.monotonic() - started
    finally:
        connection.close()


def connect(port, source="127.0.0.1", receive_buffer=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_response(sock, timeout=5):
    """Read one HTTP/1.1 response with a Content-Length: (status line, headers, body); leftovers stay unread."""
    sock.settimeout(timeout)
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        assert byte, f"connection closed after {head!r}"
        head += byte
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    body = b""
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(int(headers["content-length"]) - len(body))
        assert chunk, "connection closed in the middle of a body"
        body += chunk
    return lines[0], headers, body


def read_until_closed(sock, timeout):
    """Everything the server sends until it closes the connection (or resets it)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def is_open(sock):
    """True while the server has neither closed the connection nor sent anything on it."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True


def request_bytes(method, path, token=None, body=b"", headers=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines.extend(headers)
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(data, sizes):
    """`data` in chunks of these sizes (the last one takes the rest), then the last chunk, no trailers."""
    pieces, start = [], 0
    for size in [*sizes, len(data)]:
        piece = data[start : start + size]
        if piece:
            pieces.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        start += len(piece)
    return b"".join(pieces) + b"0\r\n\r\n"


# -- Fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def accounts(postgres_url):
    """A user with 20 tasks and one with BULK_TASKS long tasks: {"reader": token, "bulk": token}."""
    app = create_app(base_config(postgres_url))
    engine = get_engine(app)
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        tokens = {name: create_user_session(connection, app.config, f"{name}@example.com") for name in ACCOUNTS}
    for name, count, description in (("reader", 20, "short"), ("bulk", BULK_TASKS, "d" * 10_000)):
        user_id = user_id_of(app, tokens[name])
        rows = [
            {
                "user_id": user_id,
                "title": f"task {number}",
                "description": description,
                "completed": False,
                "priority": "medium",
                "tags": [],
                "created_at": now,
                "updated_at": now,
                "reminder_sent": False,
            }
            for number in range(count)
        ]
        with engine.begin() as connection:
            connection.execute(insert(task), rows)
    yield tokens
    truncate_postgres(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def service(postgres_url, accounts, tmp_path_factory):
    """2 workers x 4 threads, as in production; the cap raised for the drill's 130 connections from 127.0.0.1."""
    running = Service(
        postgres_url,
        tmp_path_factory.mktemp("service") / "gunicorn.log",
        env={**WHOLE_LIST, "GUNICORN_MAX_CONNECTIONS_PER_ADDRESS": "1000"},
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def strict_service(postgres_url, accounts, tmp_path_factory):
    """Short deadlines, and a small cap per address. One worker: the cap is per worker, so its count is exact."""
    running = Service(
        postgres_url,
        tmp_path_factory.mktemp("strict") / "gunicorn.log",
        env={
            **WHOLE_LIST,
            "WEB_CONCURRENCY": "1",
            "GUNICORN_KEEPALIVE": str(STRICT_TIMEOUT),
            "GUNICORN_HEADER_TIMEOUT": str(STRICT_TIMEOUT),
            "GUNICORN_BODY_TIMEOUT": str(STRICT_TIMEOUT),
            "GUNICORN_WRITE_TIMEOUT": str(STRICT_TIMEOUT),
            "GUNICORN_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS_CAP),
        },
    )
    yield running
    running.stop()


# -- Many slow clients at once -------------------------------------------------


class Dripper:
    """Sends the next byte of each socket's message every 0.5 s, from one thread, until stopped."""

    def __init__(self, messages):
        self.messages = messages  # socket -> the bytes it sends, one at a time
        self.sent = dict.fromkeys(messages, 0)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_exc):
        self.stopped.set()
        self.thread.join(timeout=5)

    def _run(self):
        while not self.stopped.is_set():
            for sock, message in self.messages.items():
                if self.sent[sock] < len(message):
                    try:
                        sock.send(message[self.sent[sock] : self.sent[sock] + 1])
                        self.sent[sock] += 1
                    except OSError:
                        self.sent[sock] = len(message)
            self.stopped.wait(0.5)


def test_slow_and_idle_clients_do_not_delay_anyone_else(service, accounts):
    # Warm up first (each worker's first list opens its database connection): the drill measures the slow clients.
    for _ in range(10):
        assert get(service.port, "/api/tasks", accounts["reader"])[0] == 200
    slow_readers = []
    for _ in range(10):
        # A small receive window, and the list of 600 long tasks (about 6 MB), never read.
        sock = connect(service.port, receive_buffer=4096)
        sock.sendall(request_bytes("GET", "/api/tasks", accounts["bulk"]))
        slow_readers.append(sock)
    for sock in slow_readers:  # their responses are built and on their way
        assert select.select([sock], [], [], 10)[0] == [sock]
    idle = [connect(service.port) for _ in range(50)]
    slow_heads = [connect(service.port) for _ in range(50)]
    slow_bodies = [connect(service.port) for _ in range(20)]
    body = json.dumps({"title": "slow", "description": "x" * 964}).encode()
    assert len(body) == 1000
    for sock in slow_bodies:
        sock.sendall(request_bytes("POST", "/api/tasks", accounts["reader"], body)[:-1000])
    dripping = {sock: request_bytes("GET", "/health") for sock in slow_heads}
    dripping.update({sock: body for sock in slow_bodies})
    try:
        with Dripper(dripping):
            time.sleep(1.0)  # every slow client has sent something, the slow readers' responses have stalled
            answers = []
            for _ in range(20):
                answers.append(("/health", *get(service.port, "/health")))
                answers.append(("/api/tasks", *get(service.port, "/api/tasks", accounts["reader"])))
            still_held = [is_open(sock) for sock in idle + slow_heads + slow_bodies]
    finally:
        for sock in slow_readers + idle + slow_heads + slow_bodies:
            sock.close()

    statuses = [(path, status) for path, status, _, _ in answers]
    assert statuses == [("/health", 200), ("/api/tasks", 200)] * 20
    assert all(len(json.loads(body)["data"]) == 20 for path, _, body, _ in answers if path == "/api/tasks")
    # The drill held: every slow client was still connected, and still slow, when the last answer came.
    assert still_held == [True] * 120
    health = [seconds for path, _, _, seconds in answers if path == "/health"]
    listing = [seconds for path, _, _, seconds in answers if path == "/api/tasks"]
    print(
        f"\n[drill: 50 idle, 50 slow heads, 20 slow bodies, 10 slow readers] /health x 20: "
        f"max {max(health) * 1000:.1f} ms; GET /api/tasks (20 tasks) x 20: max {max(listing) * 1000:.1f} ms"
    )
    assert max(health) < LATENCY_BOUND
    assert max(listing) < LATENCY_BOUND


# -- Each slow client is cut off at its deadline ------------------------------


def drip_until_answered(sock, message, timeout):
    """Send `message` a byte every 0.5 s until the server answers or closes.

    Returns what the server sent and the seconds from the first byte to the close."""
    started = time.monotonic()
    for byte in message:
        sock.send(bytes([byte]))
        if select.select([sock], [], [], 0.5)[0] or time.monotonic() - started > timeout:
            break
    received = read_until_closed(sock, timeout)
    return received, time.monotonic() - started


def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_408_at_the_header_timeout(strict_service):
    sock = connect(strict_service.port)
    try:
        received, seconds = drip_until_answered(sock, request_bytes("GET", "/health"), timeout=10)
    finally:
        sock.close()
    print(f"\n[drill: slow head] 408 and closed after {seconds:.2f} s (header timeout {STRICT_TIMEOUT} s)")
    assert received == TIMED_OUT
    assert STRICT_TIMEOUT - 0.1 < seconds < STRICT_TIMEOUT + SLACK


def test_a_body_sent_a_byte_at_a_time_is_cut_off_with_408_at_the_body_timeout(strict_service, accounts):
    sock = connect(strict_service.port)
    body = json.dumps({"title": "never stored"}).encode()
    try:
        sock.sendall(request_bytes("POST", "/api/tasks", accounts["reader"], body)[: -len(body)])
        received, seconds = drip_until_answered(sock, body * 10, timeout=10)
    finally:
        sock.close()
    print(f"\n[drill: slow body] 408 and closed after {seconds:.2f} s (body timeout {STRICT_TIMEOUT} s)")
    assert received == TIMED_OUT
    assert STRICT_TIMEOUT - 0.1 < seconds < STRICT_TIMEOUT + SLACK


def test_an_idle_connection_is_closed_at_the_keepalive_timeout(strict_service):
    sock = connect(strict_service.port)
    started = time.monotonic()
    try:
        received = read_until_closed(sock, timeout=10)
    finally:
        sock.close()
    seconds = time.monotonic() - started
    assert received == b""
    assert STRICT_TIMEOUT - 0.1 < seconds < STRICT_TIMEOUT + SLACK


def wait_for_reset(sock, timeout):
    """Seconds until the server resets the connection (without reading from it), or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET:
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def test_a_client_that_never_reads_its_response_is_cut_off_at_the_write_timeout(strict_service, accounts):
    sock = connect(strict_service.port, receive_buffer=4096)
    try:
        sock.sendall(request_bytes("GET", "/api/tasks", accounts["bulk"]))
        seconds = wait_for_reset(sock, timeout=10)
        received = read_until_closed(sock, timeout=10)
        # Meanwhile the service answers others at once.
        status, _, _ = get(strict_service.port, "/health")
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    print(
        f"\n[drill: slow reader] reset {seconds:.2f} s after its request (write timeout {STRICT_TIMEOUT} s), "
        f"having taken {len(body):,} of {length:,} bytes"
    )
    assert STRICT_TIMEOUT - 0.1 < seconds < STRICT_TIMEOUT + SLACK
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert length > 5_000_000
    assert len(body) < length  # cut off, not finished
    assert status == 200


# -- Connections per address ---------------------------------------------------


def test_connections_over_the_cap_per_address_are_closed_while_other_addresses_are_served(strict_service):
    flood = [connect(strict_service.port, source="127.0.0.3") for _ in range(PER_ADDRESS_CAP + 10)]
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and [is_open(sock) for sock in flood].count(False) < 10:
            time.sleep(0.05)
        time.sleep(0.1)  # any more would be closed by now
        assert [is_open(sock) for sock in flood] == [True] * PER_ADDRESS_CAP + [False] * 10
        other = connect(strict_service.port, source="127.0.0.2")
        other.sendall(request_bytes("GET", "/health"))
        assert read_response(other)[::2] == ("HTTP/1.1 200 OK", b'{"status":"healthy"}')
        other.close()
    finally:
        for sock in flood:
            sock.close()
    # Once they are closed, the address gets in again.
    for _ in range(50):
        sock = connect(strict_service.port, source="127.0.0.3")
        try:
            sock.sendall(request_bytes("GET", "/health"))
            if read_response(sock)[0] == "HTTP/1.1 200 OK":
                break
        except (AssertionError, OSError):
            time.sleep(0.05)  # still over the cap: closed at once
        finally:
            sock.close()
    else:
        raise AssertionError("127.0.0.3 was never served again")


# -- The protocol still works --------------------------------------------------


def test_two_requests_on_one_kept_alive_connection(service, accounts):
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    try:
        connection.request("GET", "/health")
        first = connection.getresponse()
        assert (first.status, first.getheader("Connection")) == (200, "keep-alive")
        assert first.read() == b'{"status":"healthy"}'
        sock = connection.sock
        connection.request("GET", "/api/tasks?limit=2", headers={"Authorization": f"Bearer {accounts['reader']}"})
        second = connection.getresponse()
        assert (second.status, len(json.loads(second.read())["data"])) == (200, 2)
        assert connection.sock is sock
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_order(service, accounts):
    body = json.dumps({"title": "pipelined"}).encode()
    create = request_bytes("POST", "/api/tasks", accounts["reader"], body)
    sock = connect(service.port)
    try:
        sock.sendall(request_bytes("GET", "/health") + create + request_bytes("GET", "/"))
        first, second, third = read_response(sock), read_response(sock), read_response(sock)
        # A pipelined request split across sends, the rest arriving after the first is answered.
        sock.sendall(request_bytes("GET", "/health") + create[:20])
        fourth = read_response(sock)
        sock.sendall(create[20:])
        fifth = read_response(sock)
    finally:
        sock.close()
    assert first[::2] == ("HTTP/1.1 200 OK", b'{"status":"healthy"}')
    assert (second[0], json.loads(second[2])["data"]["title"]) == ("HTTP/1.1 200 OK", "pipelined")
    assert third[::2] == ("HTTP/1.1 200 OK", b'{"message":"todo-api is running"}')
    assert fourth[::2] == ("HTTP/1.1 200 OK", b'{"status":"healthy"}')
    assert (fifth[0], json.loads(fifth[2])["data"]["title"]) == ("HTTP/1.1 200 OK", "pipelined")


def test_a_chunked_body_sent_in_pieces_is_reassembled(service, accounts):
    body = json.dumps({"title": "chunked", "description": "é" * 3000}).encode()
    head = request_bytes("POST", "/api/tasks", accounts["reader"], headers=["Content-Type: application/json"])
    head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
    message = head + chunked(body, [1, 100, 4000, 17])
    sock = connect(service.port)
    try:
        for start in range(0, len(message), 997):  # pieces that cut chunk-size lines and data alike
            sock.sendall(message[start : start + 997])
            time.sleep(0.01)
        status, headers, created = read_response(sock)
        created = json.loads(created)["data"]
        sock.sendall(request_bytes("GET", f"/api/tasks/{created['id']}", accounts["reader"]))
        stored = json.loads(read_response(sock)[2])["data"]
    finally:
        sock.close()
    assert (status, headers["connection"]) == ("HTTP/1.1 200 OK", "keep-alive")
    assert (created["title"], created["description"]) == ("chunked", "é" * 3000)
    assert stored == created


def test_a_chunked_body_over_1_mib_is_413_json_and_closed(service, accounts):
    head = request_bytes("POST", "/api/tasks", accounts["reader"], headers=["Content-Type: application/json"])
    head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
    sock = connect(service.port)
    try:
        sock.sendall(head)
        for _ in range(17):  # 17 chunks of 64 KiB: just over 1 MiB
            sock.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        received = read_until_closed(sock, timeout=5)
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 413 Request Entity Too Large",
        b"Content-Type: application/json",
        b"Content-Length: 67",
        b"Connection: close",
    ]
    assert json.loads(body) == TOO_LARGE


def test_a_declared_body_over_1_mib_is_refused_by_the_app_unread_and_closed(service, accounts):
    """Expect: 100-continue is not answered for it, so a client that waits never sends the body."""
    head = request_bytes("POST", "/api/tasks", accounts["reader"], headers=["Expect: 100-continue"])
    head = head[:-2] + b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
    sock = connect(service.port)
    try:
        sock.sendall(head)
        status, headers, body = read_response(sock)
        assert read_until_closed(sock, timeout=5) == b""
    finally:
        sock.close()
    assert (status, headers["connection"], headers["content-type"]) == (
        "HTTP/1.1 413 REQUEST ENTITY TOO LARGE",
        "close",
        "application/json",
    )
    assert json.loads(body) == TOO_LARGE


def test_expect_100_continue_is_answered_before_the_body_is_sent(service, accounts):
    body = json.dumps({"title": "after 100"}).encode()
    sock = connect(service.port)
    try:
        message = request_bytes("POST", "/api/tasks", accounts["reader"], body, ["Expect: 100-continue"])
        sock.sendall(message[: -len(body)])
        sock.settimeout(5)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, created = read_response(sock)
    finally:
        sock.close()
    assert (status, json.loads(created)["data"]["title"]) == ("HTTP/1.1 200 OK", "after 100")


def test_a_request_head_over_64_kib_is_431_json(service):
    sock = connect(service.port)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        for number in range(10):
            sock.sendall(b"X-Filler-%d: " % number + b"f" * 8000 + b"\r\n")
        received = read_until_closed(sock, timeout=5)
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(body) == {"detail": "One or more header fields exceeds the maximum size."}


BAD_REQUEST = {"detail": "The browser (or proxy) sent a request that this server could not understand."}


@pytest.mark.parametrize(
    ("message", "status", "detail"),
    [
        (b"GARBAGE\r\n\r\n", "400 Bad Request", BAD_REQUEST),
        (b"GET /health HTTP/1.1\nHost: x\n\n", "400 Bad Request", BAD_REQUEST),  # bare LF: no header timeout
        (b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "400 Bad Request", BAD_REQUEST),
        (b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400 Bad Request", BAD_REQUEST),
        (
            b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
            "414 URI Too Long",
            {
                "detail": "The length of the requested URL exceeds the capacity limit for this server. "
                "The request cannot be processed."
            },
        ),
    ],
)
def test_a_request_that_cannot_be_parsed_is_answered_in_json_at_once(service, message, status, detail):
    sock = connect(service.port)
    started = time.monotonic()
    try:
        sock.sendall(message)
        received = read_until_closed(sock, timeout=5)
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[:2] == [b"HTTP/1.1 " + status.encode(), b"Content-Type: application/json"]
    assert json.loads(body) == detail
    assert time.monotonic() - started < 1


# -- The access log ------------------------------------------------------------


def test_the_access_log_has_the_path_without_the_query_string(service):
    assert get(service.port, "/health?q=secretword")[0] == 200
    time.sleep(0.2)  # the line is written after the response
    log = service.output()
    assert "secretword" not in log
    lines = [line for line in log.splitlines() if '"GET /health' in line]
    assert re.fullmatch(r'127\.0\.0\.1 "GET /health HTTP/1\.1" 200 20 \d+ms', lines[-1])


# -- Framing, without a server -------------------------------------------------


class Limits:
    limit_request_line = 4094
    limit_request_field_size = 8190


def scan_byte_by_byte(message):
    framing, buf = RequestFraming(Limits), bytearray()
    verdicts = []
    for byte in message:
        buf.append(byte)
        verdicts.append(framing.scan(buf))
    return verdicts


def test_a_head_is_complete_at_its_empty_line_and_a_body_at_its_length():
    head = b"POST /api/tasks HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
    verdicts = scan_byte_by_byte(head + b"abc")
    assert verdicts == [None] * (len(head) + 2) + [Verdict.READY]


def test_a_chunked_body_is_complete_after_its_last_chunk_and_trailers():
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    body = b"3;name=value\r\nabc\r\n10\r\n" + b"y" * 16 + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    verdicts = scan_byte_by_byte(head + body)
    assert verdicts == [None] * (len(head) + len(body) - 1) + [Verdict.READY]


@pytest.mark.parametrize(
    ("message", "verdict"),
    [
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", Verdict.BAD_CHUNKED_BODY),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY", Verdict.BAD_CHUNKED_BODY),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 ;a=\x01\r\n", Verdict.BAD_CHUNKED_BODY),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n", Verdict.BODY_TOO_LARGE),
        # What gunicorn refuses is handed to it unframed, to answer and close.
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Verdict.READY_THEN_CLOSE),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Verdict.READY_THEN_CLOSE),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Verdict.READY_THEN_CLOSE),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Verdict.READY_THEN_CLOSE),
        (b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n", Verdict.READY_THEN_CLOSE),
        (b"GET /" + b"a" * 5000, Verdict.READY_THEN_CLOSE),
        # Declared over the limit: the app refuses it unread.
        (b"POST / HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", Verdict.READY_THEN_CLOSE),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 4000 + b"\r\n" + b"Y: b\r\n" * 11000, Verdict.HEAD_TOO_LARGE),
    ],
)
def test_framing_verdicts(message, verdict):
    assert RequestFraming(Limits).scan(bytearray(message)) is verdict


def test_the_worker_body_limit_is_the_apps():
    assert gunicorn_worker.MAX_BODY_BYTES == from_environment()["MAX_CONTENT_LENGTH"]
