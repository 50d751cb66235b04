"""gunicorn's threaded worker: a shutdown that drops no request, and no thread held by a slow or idle client.

DrainingThreadWorker. On SIGTERM the stock worker stops accepting but keeps
its listening socket open until it exits, so the kernel keeps completing new
connections into the socket's backlog; clients send their requests on them,
and when the worker finally exits those connections are reset, requests
unread. Here a stopping worker first accepts whatever is already waiting
(those requests are served, with `Connection: close`) and then closes its
listening socket at once, so a client that connects afterwards is refused
before it sends anything and can safely retry elsewhere.

BufferingThreadWorker (the one gunicorn.conf.py runs) adds to it that no pool
thread ever waits on a client. The stock worker hands each accepted socket to a
pool thread, which then reads the request and writes the response with blocking
calls, so a few connections that send or read slowly, or not at all, hold
every thread. Here the main thread (the poller) reads each request without
blocking until it is complete, head and body, under deadlines; only then does a
pool thread parse it, from memory, with gunicorn's own parser, and run the app.
The response goes to a buffer that the poller sends, again under a deadline.
Open connections are bounded per client address and per worker.
"""

import errno
import heapq
import itertools
import json
import os
import selectors
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from functools import partial

from gunicorn import http
from gunicorn.http.body import CHUNK_EXT_RE
from gunicorn.http.message import MAX_REQUEST_LINE
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker
from werkzeug.exceptions import (
    BadRequest,
    InternalServerError,
    RequestEntityTooLarge,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
    default_exceptions,
)

# The app's MAX_CONTENT_LENGTH (tests/test_slow_clients.py checks that they agree).
MAX_BODY_BYTES = 1024 * 1024
# A request head (request line and headers) larger than this is answered 431 without being read further.
MAX_HEAD_BYTES = 64 * 1024
# Responses are buffered up to this size (a list of 1,000 tasks with long descriptions comes close); the thread
# writes a larger one itself, and gives up after the write timeout.
MAX_BUFFERED_RESPONSE_BYTES = 8 * 1024 * 1024
READ_SIZE = 64 * 1024
# A closing connection is drained for this long, at most this much, so that the kernel does not reset it
# (and lose the end of the response) over request bytes the client is still sending; as gunicorn does.
CLOSE_LINGER_SECONDS = 2.0
CLOSE_LINGER_BYTES = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
TRANSFER_CODINGS_BEFORE_CHUNKED = frozenset((b"identity", b"gzip", b"deflate", b"compress"))


class DrainingThreadWorker(ThreadWorker):
    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self._accept_backlog_and_close()

    def _accept_backlog_and_close(self):
        for listener in self.sockets:
            while True:
                try:
                    client_sock, client_addr = listener.accept()
                except OSError as error:
                    if error.errno == errno.ECONNABORTED:
                        continue  # that client gave up; look for the next
                    break  # EAGAIN: the backlog is empty
                self.serve_accepted(client_sock, client_addr, listener)
            listener.close()

    def serve_accepted(self, client_sock, client_addr, listener):
        self.nr_conns += 1
        client_sock.setblocking(True)
        self.enqueue_req(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))


# -- Client limits -----------------------------------------------------------


def env_seconds(name, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise RuntimeError(f"{name} must be more than 0, got {raw!r}")
    return value


def env_count(name, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise RuntimeError(f"{name} must be a whole number, 0 or more, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class ClientLimits:
    """How long a client may take over each part of an exchange, and how many connections it may hold."""

    idle_timeout: float  # a connection with no request under way (gunicorn's keepalive)
    header_timeout: float  # a request head, from its first byte
    body_timeout: float  # a request body, from the end of its head
    write_timeout: float  # a response, from the moment it is ready
    per_address: int  # open connections per client address and worker; 0: no cap

    @classmethod
    def from_environment(cls, keepalive):
        header_timeout = env_seconds("GUNICORN_HEADER_TIMEOUT", 10.0)
        return cls(
            # With keepalive off a new connection still gets time to send its first request.
            idle_timeout=keepalive or header_timeout,
            header_timeout=header_timeout,
            body_timeout=env_seconds("GUNICORN_BODY_TIMEOUT", 20.0),
            write_timeout=env_seconds("GUNICORN_WRITE_TIMEOUT", 20.0),
            per_address=env_count("GUNICORN_MAX_CONNECTIONS_PER_ADDRESS", 100),
        )


# -- Where a request ends ----------------------------------------------------


class Verdict(Enum):
    """What a connection's buffer holds, once it holds enough to say."""

    READY = "a whole request (and maybe the start of the next one)"
    # A head that gunicorn's parser will refuse, or a body the app will refuse unread (over its size limit):
    # gunicorn or the app answers, and the connection closes afterwards.
    READY_THEN_CLOSE = "a request to hand on unframed, then close"
    HEAD_TOO_LARGE = "a head (or trailer section) over MAX_HEAD_BYTES"
    BODY_TOO_LARGE = "a chunked body over MAX_BODY_BYTES"
    BAD_CHUNKED_BODY = "chunked framing gunicorn would refuse"


class RequestFraming:
    """Finds where the request at the start of a buffer ends, from the bytes that have arrived so far.

    Called again as more bytes come in; it resumes where it stopped, so a head or a chunked body that arrives a
    byte at a time costs linear time. It reads only what framing needs (Content-Length, Transfer-Encoding,
    Expect) and is at least as strict as gunicorn's parser where the two could disagree on where a body ends:
    whatever gunicorn would refuse is handed to it unframed, to be answered with gunicorn's error and closed.
    """

    def __init__(self, cfg):
        # gunicorn's own limits, as its parser applies them (0 or less: its defaults).
        limit = cfg.limit_request_line
        self.max_request_line = limit if 0 <= limit <= MAX_REQUEST_LINE else MAX_REQUEST_LINE
        self.max_chunk_line = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else 8190
        self.head_end = None
        self.searched = 0  # where the search for the end of the head (or of the trailers) resumes
        self.body_length = None  # Content-Length
        self.chunked = False
        self.expects_continue = False
        # The chunked body: where its next unparsed byte is, what comes there, and its decoded size so far.
        self.position = 0
        self.stage = "size"
        self.chunk_left = 0
        self.decoded = 0

    @property
    def in_body(self):
        return self.head_end is not None

    def scan(self, buf):
        """A Verdict, or None while the request is incomplete."""
        if self.head_end is None:
            verdict = self._scan_head(buf)
            if self.head_end is None or verdict is not None:
                return verdict
        if self.chunked:
            return self._scan_chunks(buf)
        return Verdict.READY if len(buf) >= self.head_end + self.body_length else None

    def _scan_head(self, buf):
        resume = max(0, self.searched - 3)
        end = buf.find(b"\r\n\r\n", resume)
        self.searched = len(buf)
        if end < 0:
            if buf.find(b"\n\n", resume) >= 0:
                return Verdict.READY_THEN_CLOSE  # a head ended by bare LFs: gunicorn answers 400
            if len(buf) > MAX_HEAD_BYTES:
                return Verdict.HEAD_TOO_LARGE
            line_limit = self.max_request_line
            if line_limit and len(buf) > line_limit + 2 and buf.find(b"\r\n", 0, line_limit + 4) < 0:
                return Verdict.READY_THEN_CLOSE  # gunicorn answers 414
            return None
        if end + 4 > MAX_HEAD_BYTES:
            return Verdict.HEAD_TOO_LARGE
        self.head_end = end + 4
        return self._read_framing(bytes(buf[:end]))

    def _read_framing(self, head):
        lines = head.split(b"\r\n")
        if lines[0] == b"":
            del lines[0]  # the one empty line gunicorn ignores before a request line
        if not lines or not lines[0]:
            return Verdict.READY_THEN_CLOSE
        version = lines[0].rpartition(b" ")[2]
        lengths, codings = [], []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.lower(), value.strip(b" \t")
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.extend(coding.strip(b" \t").lower() for coding in value.split(b","))
            elif name == b"expect":
                self.expects_continue = value.lower() == b"100-continue" and version == b"HTTP/1.1"
        if codings:
            # gunicorn's rules (RFC 9112 section 6): chunked once, last, on HTTP/1.1, without Content-Length.
            if (
                lengths
                or version != b"HTTP/1.1"
                or codings[-1] != b"chunked"
                or not TRANSFER_CODINGS_BEFORE_CHUNKED.issuperset(codings[:-1])
            ):
                return Verdict.READY_THEN_CLOSE
            self.chunked = True
            self.position = self.head_end
            return None
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            return Verdict.READY_THEN_CLOSE
        self.body_length = int(lengths[0]) if lengths else 0
        if self.body_length > MAX_BODY_BYTES:
            # Not buffered: the app refuses it unread, with its own 413 and CORS headers.
            self.expects_continue = False
            return Verdict.READY_THEN_CLOSE
        return None

    def _scan_chunks(self, buf):
        if len(buf) - self.head_end > 2 * MAX_BODY_BYTES + MAX_HEAD_BYTES:
            return Verdict.BODY_TOO_LARGE  # framing overhead of tiny chunks counts too
        while True:
            if self.stage == "size":
                end = buf.find(b"\r\n", self.position)
                if end < 0:
                    return Verdict.BAD_CHUNKED_BODY if len(buf) - self.position > self.max_chunk_line else None
                size = chunk_size(bytes(buf[self.position : end]))
                if size is None:
                    return Verdict.BAD_CHUNKED_BODY
                self.position = end + 2
                if size == 0:
                    self.stage, self.searched = "trailers", self.position
                    continue
                self.decoded += size
                if self.decoded > MAX_BODY_BYTES:
                    return Verdict.BODY_TOO_LARGE
                self.stage, self.chunk_left = "data", size
            elif self.stage == "data":
                if len(buf) - self.position < self.chunk_left + 2:
                    return None
                self.position += self.chunk_left
                if buf[self.position : self.position + 2] != b"\r\n":
                    return Verdict.BAD_CHUNKED_BODY
                self.position += 2
                self.stage = "size"
            else:  # trailers: none (an empty line), or header lines up to an empty one
                if len(buf) - self.position < 2:
                    return None
                if buf[self.position : self.position + 2] == b"\r\n":
                    return Verdict.READY
                if buf.find(b"\r\n\r\n", max(self.position, self.searched - 3)) >= 0:
                    return Verdict.READY
                self.searched = len(buf)
                return Verdict.HEAD_TOO_LARGE if len(buf) - self.position > MAX_HEAD_BYTES else None


def chunk_size(line):
    """The size on a chunk-size line, or None where gunicorn's ChunkedReader would refuse the line."""
    digits, semicolon, extension = line.partition(b";")
    if semicolon:
        if b"\r" in extension or not CHUNK_EXT_RE.fullmatch(b";" + extension):
            return None
        digits = digits.rstrip(b" \t")
    if not digits or not HEX_DIGITS.issuperset(digits):
        return None
    return int(digits, 16)


def error_response(status, detail):
    """A response the poller sends itself: the service's JSON error shape, and the connection closes."""
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


# -- A connection and what a pool thread sees of it ---------------------------


class Connection:
    """One client connection: the bytes read and not yet parsed, the response not yet sent, and its deadline."""

    # States: "reading" a request (none under way yet, or part of one), "dispatched" to a pool thread,
    # "writing" a response, "closing" (write side shut, draining what the client still sends), "closed".

    def __init__(self, cfg, sock, client, server, limits):
        self.cfg = cfg
        self.raw = sock
        self.client = client
        self.server = server
        self.limits = limits
        self.address = client[0] if isinstance(client, tuple) else ""
        self.sock = RequestStream(self)  # what gunicorn's parser and response use, in the thread
        self.parser = None
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.state = "reading"
        self.phase = None  # while reading: "idle", "head" or "body"
        self.framing = None
        self.deadline = None
        self.registered = False
        self.close_after = False
        self.keepalive = False
        self.drained = 0
        self.write_through_deadline = None

    def new_request(self):
        self.framing = RequestFraming(self.cfg)
        self.phase = None
        self.close_after = False
        self.sock.reset()

    def queue_output(self, data):
        """Called in the pool thread for every write of the response."""
        if self.write_through_deadline is None and len(self.outbuf) + len(data) <= MAX_BUFFERED_RESPONSE_BYTES:
            self.outbuf += data
            return
        if self.write_through_deadline is None:
            # Too large to buffer: the thread writes it, and gives up after the write timeout.
            self.write_through_deadline = time.monotonic() + self.limits.write_timeout
            self._write_blocking(self.outbuf)
            self.outbuf.clear()
        self._write_blocking(data)

    def _write_blocking(self, data):
        remaining = self.write_through_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client did not take the response within the write timeout")
        self.raw.settimeout(remaining)
        self.raw.sendall(data)

    def send_some(self):
        """Send what the socket takes now, without blocking; True when the whole response is out."""
        while self.outbuf:
            try:
                sent = self.raw.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return False
            del self.outbuf[:sent]
        return True

    def take_back_read_ahead(self):
        """Bytes the parser read past the request (pipelined ones) return to the front of the buffer."""
        if self.parser is not None:
            self.inbuf[:0] = self.parser.unreader.take_buffered()


class ErrorPage:
    """Stands in for the client socket while gunicorn writes one of its HTML error pages; keeps the status."""

    status = None

    def gettimeout(self):
        return 0.0

    def sendall(self, data):
        self.status = data.split(b"\r\n", 1)[0].split(b" ", 1)[1].decode("latin-1")


class RequestStream:
    """The client socket as gunicorn's parser and response see it in a pool thread: never the network.

    recv serves the bytes the poller has already read (a request reaches a thread complete), so a thread never
    waits for a client; if the parser wants more than is there, it gets end-of-file, and the connection is closed
    after this request. Writes go to the connection's response buffer.
    """

    def __init__(self, conn):
        self.conn = conn
        self.reset()

    def reset(self):
        """For the next request on the connection (gunicorn's parser keeps this object across requests)."""
        self.starved = False
        # Set when the poller has sent "100 Continue" itself, or when the body is not wanted.
        self.skip_continue = False
        self.closed = False

    def recv(self, size):
        inbuf = self.conn.inbuf
        if not inbuf:
            self.starved = True
            return b""
        data = bytes(inbuf[:size])
        del inbuf[:size]
        return data

    def sendall(self, data):
        self.conn.queue_output(data)

    def send(self, data):
        if data == CONTINUE and self.skip_continue:
            return len(data)
        self.conn.queue_output(data)
        return len(data)

    def sendfile(self, file, offset=0, count=None):
        file.seek(offset)
        left = count
        while left is None or left > 0:
            data = file.read(READ_SIZE if left is None else min(READ_SIZE, left))
            if not data:
                break
            self.conn.queue_output(data)
            if left is not None:
                left -= len(data)

    def gettimeout(self):
        return 0.0

    def settimeout(self, timeout):
        pass

    def setblocking(self, flag):
        pass

    def shutdown(self, how):
        self.closed = True

    def close(self):
        self.closed = True


# -- The worker ----------------------------------------------------------------


class BufferingThreadWorker(DrainingThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.is_ssl:
            raise RuntimeError("BufferingThreadWorker serves plain HTTP/1.1; terminate TLS in front of it")
        self.limits = ClientLimits.from_environment(self.cfg.keepalive)
        self.connections = set()
        self.open_per_address = Counter()
        self.deadlines = []  # heap of (deadline, sequence, connection); stale entries are skipped
        self.sequence = itertools.count()
        self.read_buffer = memoryview(bytearray(READ_SIZE))  # the main thread's, for every read

    # Accepting

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.serve_accepted(client_sock, client_addr, listener)

    def serve_accepted(self, client_sock, client_addr, listener):
        address = client_addr[0] if isinstance(client_addr, tuple) else ""
        cap = self.limits.per_address
        if cap and self.open_per_address[address] >= cap:
            self.log.debug("Closed a connection over the cap of %s per client address", cap)
            client_sock.close()
            return
        self.nr_conns += 1
        self.open_per_address[address] += 1
        client_sock.setblocking(False)
        conn = Connection(self.cfg, client_sock, client_addr, listener.getsockname(), self.limits)
        self.connections.add(conn)
        self._read_request(conn)

    # Reading a request

    def _read_request(self, conn):
        """Start on the next request: from what is already buffered (pipelined), then from the socket."""
        conn.state = "reading"
        conn.new_request()
        self._advance(conn)
        if conn.state == "reading":
            self._watch(conn, selectors.EVENT_READ, self._on_readable)

    def _on_readable(self, conn, _sock):
        try:
            size = conn.raw.recv_into(self.read_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not size:
            self._close(conn)  # the client went away; nothing of a request in part can be answered
            return
        conn.inbuf += self.read_buffer[:size]
        self._advance(conn)

    def _advance(self, conn):
        verdict = conn.framing.scan(conn.inbuf)
        if verdict is None:
            if conn.framing.in_body:
                self._enter_phase(conn, "body")
            elif conn.inbuf in (b"", b"\r", b"\r\n"):  # an empty line before a request is still idle
                self._enter_phase(conn, "idle")
            else:
                self._enter_phase(conn, "head")
        elif verdict is Verdict.READY:
            self._dispatch(conn)
        elif verdict is Verdict.READY_THEN_CLOSE:
            conn.close_after = True
            conn.sock.skip_continue = True
            self._dispatch(conn)
        elif verdict is Verdict.HEAD_TOO_LARGE:
            self._refuse(conn, "431 Request Header Fields Too Large", RequestHeaderFieldsTooLarge.description)
        elif verdict is Verdict.BODY_TOO_LARGE:
            self._refuse(conn, "413 Request Entity Too Large", RequestEntityTooLarge.description)
        else:
            self._refuse(conn, "400 Bad Request", BadRequest.description)

    def _enter_phase(self, conn, phase):
        if conn.phase == phase:
            return
        conn.phase = phase
        now = time.monotonic()
        if phase == "idle":
            deadline = now + self.limits.idle_timeout
            if not self.alive:
                deadline = min(deadline, now + STOP_KEEPALIVE_LINGER)
        elif phase == "head":
            deadline = now + self.limits.header_timeout
        else:
            deadline = now + self.limits.body_timeout
            if conn.framing.expects_continue:
                self._send_continue(conn)
        self._set_deadline(conn, deadline)

    def _send_continue(self, conn):
        """Expect: 100-continue: the client waits for this before sending its body."""
        try:
            sent = conn.raw.send(CONTINUE)
        except OSError:
            return
        conn.sock.skip_continue = sent == len(CONTINUE)

    # Running a request in a pool thread

    def _dispatch(self, conn):
        self._unwatch(conn)
        conn.state = "dispatched"
        conn.deadline = None
        self.enqueue_req(conn)

    def handle(self, conn):
        """Parse the buffered request and run the app; runs in a pool thread. True to keep the connection."""
        req = None
        try:
            if conn.parser is None:
                conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            req = next(conn.parser)
            if conn.close_after:
                req.force_close()
            keepalive = self.handle_request(req, conn)
            keepalive = keepalive and conn.parser.finish_body() and not (conn.sock.starved or conn.sock.closed)
            # Most responses leave at once, from here; the poller sends what the socket does not take now.
            conn.send_some()
            return keepalive
        except (http.errors.NoMoreData, StopIteration) as error:
            self.log.debug("Closing connection. %r", error)
        except TimeoutError:
            self.log.debug("Closing connection: a large response was not taken within the write timeout")
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as error:
            self.handle_error(req, conn.sock, conn.client, error)
        return False

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to a request it cannot parse (400, 414, 431, 501...), in the service's JSON shape."""
        page = ErrorPage()
        super().handle_error(req, page, addr, exc)
        if page.status:
            code = int(page.status[:3])
            detail = default_exceptions.get(code, InternalServerError).description
            client.sendall(error_response(page.status, detail))

    def finish_request(self, conn, fs):
        """A pool thread is done with the connection (runs in the main thread)."""
        try:
            conn.keepalive = bool(fs.result()) if not fs.cancelled() else False
        except Exception:
            conn.keepalive = False
        try:
            if conn.write_through_deadline is not None:
                conn.raw.setblocking(False)
                conn.write_through_deadline = None
            conn.take_back_read_ahead()
            self._send_response(conn)
        except OSError:
            self._close(conn)

    # Writing a response

    def _send_response(self, conn):
        conn.state = "writing"
        if conn.send_some():
            self._after_response(conn)
            return
        self._set_deadline(conn, time.monotonic() + self.limits.write_timeout)
        self._watch(conn, selectors.EVENT_WRITE, self._on_writable)

    def _on_writable(self, conn, _sock):
        try:
            done = conn.send_some()
        except OSError:
            self._close(conn)
            return
        if done:
            self._after_response(conn)

    def _after_response(self, conn):
        if conn.keepalive:
            self._read_request(conn)
        else:
            self._close_gracefully(conn)

    def _refuse(self, conn, status, detail):
        """Answer a request the poller will not hand on, then close."""
        self.log.debug("Refused a request: %s", status)
        conn.inbuf.clear()
        conn.outbuf += error_response(status, detail)
        conn.keepalive = False
        try:
            self._send_response(conn)
        except OSError:
            self._close(conn)

    # Closing

    def _close_gracefully(self, conn):
        """Shut the write side and drain what the client still sends for a moment, then close."""
        try:
            conn.raw.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = "closing"
        conn.inbuf.clear()
        self._set_deadline(conn, time.monotonic() + CLOSE_LINGER_SECONDS)
        self._watch(conn, selectors.EVENT_READ, self._on_closing_readable)

    def _on_closing_readable(self, conn, _sock):
        try:
            data = conn.raw.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained >= CLOSE_LINGER_BYTES:
            self._close(conn)

    def _close(self, conn, abort=False):
        """Close now; `abort` resets the connection, dropping what the kernel still holds to send."""
        if conn.state == "closed":
            return
        self._unwatch(conn)
        conn.state = "closed"
        conn.deadline = None
        conn.outbuf.clear()
        try:
            if abort:
                conn.raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.raw.close()
        except OSError:
            pass
        self.connections.discard(conn)
        self.nr_conns -= 1
        self.open_per_address[conn.address] -= 1
        if not self.open_per_address[conn.address]:
            del self.open_per_address[conn.address]

    # Deadlines

    def _set_deadline(self, conn, deadline):
        conn.deadline = deadline
        heapq.heappush(self.deadlines, (deadline, next(self.sequence), conn))

    def _expire_deadlines(self):
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            deadline, _, conn = heapq.heappop(self.deadlines)
            if conn.deadline != deadline:
                continue  # superseded by a later deadline, or the connection moved on
            if conn.state == "reading" and conn.phase != "idle":
                self.log.debug("Request %s not complete within its timeout", conn.phase)
                self._refuse(conn, "408 Request Timeout", RequestTimeout.description)
            elif conn.state == "writing":
                self.log.debug("Response not taken within the write timeout")
                self._close(conn, abort=True)
            else:
                self._close(conn)  # idle, or a closing connection drained long enough

    def _poll_timeout(self, longest):
        if not self.deadlines:
            return longest
        return min(longest, max(0.0, self.deadlines[0][0] - time.monotonic()))

    # The poller

    def _watch(self, conn, events, callback):
        handler = partial(callback, conn)
        if conn.registered:
            self.poller.modify(conn.raw, events, handler)
        else:
            self.poller.register(conn.raw, events, handler)
            conn.registered = True

    def _unwatch(self, conn):
        if conn.registered:
            self.poller.unregister(conn.raw)
            conn.registered = False

    def run(self):
        self.poller.register(self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks)
        self.set_accept_enabled(True)
        while self.alive:
            self.notify()
            can_accept = self.nr_conns < self.worker_connections
            if can_accept != self._accepting:
                self.set_accept_enabled(can_accept)
            self.wait_for_and_dispatch_events(timeout=self._poll_timeout(1.0))
            if not self.is_parent_alive():
                break
            self._expire_deadlines()

        # Stopping: take in the backlog and close the port (DrainingThreadWorker), give idle connections a moment
        # for a request already on its way (answered with "Connection: close"), finish the rest.
        self.set_accept_enabled(False)
        linger_deadline = time.monotonic() + STOP_KEEPALIVE_LINGER
        for conn in list(self.connections):
            if conn.state == "reading" and conn.phase == "idle" and conn.deadline > linger_deadline:
                self._set_deadline(conn, linger_deadline)
        graceful_deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.nr_conns > 0 and time.monotonic() < graceful_deadline:
            self.notify()
            self.wait_for_and_dispatch_events(timeout=self._poll_timeout(1.0))
            self._expire_deadlines()

        for conn in list(self.connections):
            self._close(conn)
        self.tpool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()
        for listener in self.sockets:
            listener.close()
