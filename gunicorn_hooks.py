"""What gunicorn.conf.py adds to gunicorn's stock gevent worker, each through a documented setting or server hook.

- `Logger` (logger_class): the access line without query string or headers, composed directly; and gunicorn's
  own messages about requests it cannot parse say what was wrong, never what the client sent.
- `wait_for_postgres` (post_fork): psycopg2 made cooperative (psycogreen's wait callback), with libpq's
  connect timeout kept.
- `cap_connections_per_address` and `with_client_deadlines` (post_worker_init): open connections per client
  address are capped; a request reaches the app with its body in, within a deadline, so that no request
  holds a database connection while its client is still sending; a client that takes no part of its response
  within the deadline is dropped.
- `close_after_chunked_body` (pre_request) and `linger_after_chunked_body` (post_request): an unread chunked
  body is never parsed to be dropped.
- `keep_backlog` (post_worker_init) and `serve_backlog` (worker_exit): a stopping worker serves the
  connections waiting in its listening socket's backlog instead of letting the kernel reset them.
- `json_error_page` (in place of gunicorn's HTML page for a request it cannot parse): the service's JSON errors.

Nothing here imports the app: gunicorn's master loads this module, and the app must be imported only after
each worker has patched the standard library for gevent.
"""

import io
import json
import logging
import re
import socket
import sys
from collections import Counter

from gunicorn import glogging
from werkzeug.exceptions import BadRequest, ClientDisconnected, InternalServerError, RequestTimeout, default_exceptions

# -- Logging -------------------------------------------------------------------


def access_line(resp, environ, request_time):
    """`<address> "<method> <path> <protocol>" <status> <bytes> <milliseconds>ms`: no query string (it carries
    search words and page cursors), no header."""
    status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
    sent = getattr(resp, "sent", None)
    milliseconds = request_time.seconds * 1000 + request_time.microseconds // 1000
    return (
        f'{environ.get("REMOTE_ADDR", "-")} "{environ.get("REQUEST_METHOD")} {environ.get("PATH_INFO")} '
        f'{environ.get("SERVER_PROTOCOL")}" {status} {"-" if sent is None else sent} {milliseconds}ms'
    )


# gunicorn's messages that quote a request it could not parse (a header line, the request line, a URI with its
# query string) or a request's URI; what follows the colon, or the URI, is replaced.
INVALID_REQUEST = re.compile(r"(Invalid request from ip=[^:]*): .*", re.DOTALL)
REQUEST_URI = re.compile(r"(Error handling request) .*", re.DOTALL)
SOCKET_ERROR = "Socket error processing request."
CLIENT_TIMED_OUT = "Closed a connection whose client sent or took nothing within the timeout"


class RedactRequestText(logging.Filter):
    """Rewrites gunicorn's error-log records that would quote a client's request: the record keeps what went
    wrong (the parse error's type), never a header, a request line or a query string."""

    def filter(self, record):
        message = record.getMessage()
        error = sys.exc_info()[1]
        named = f": {type(error).__name__}" if error is not None else ""
        for pattern, replacement in ((INVALID_REQUEST, rf"\1{named}"), (REQUEST_URI, r"\1 (request not shown)")):
            if pattern.match(message):
                record.msg, record.args = pattern.sub(replacement, message), ()
                break
        raised = record.exc_info[1] if record.exc_info else None
        if raised is not None and is_parse_error(raised):
            record.exc_info, record.exc_text = None, None  # a parse error's text quotes the request
        if message == SOCKET_ERROR and isinstance(raised, TimeoutError):  # a deadline of with_client_deadlines
            record.msg, record.args, record.exc_info, record.exc_text = CLIENT_TIMED_OUT, (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def is_parse_error(error):
    return type(error).__module__ == "gunicorn.http.errors"


class Logger(glogging.Logger):
    """gunicorn's logger: the access line of `access_line`, and its error log through `RedactRequestText`.

    gunicorn's own access log builds some twenty fields for every line (every request and response header among
    them) and hands it to `logging`, which makes a record of it: about 84 µs a line with the same format, against
    7 µs for this one, which writes the line directly to a stream or file handler."""

    def setup(self, cfg):
        super().setup(cfg)
        if not any(isinstance(existing, RedactRequestText) for existing in self.error_log.filters):
            self.error_log.addFilter(RedactRequestText())

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        line = access_line(resp, environ, request_time)
        handlers = self.access_log.handlers
        if not all(type(handler) in (logging.StreamHandler, logging.FileHandler) for handler in handlers):
            self.access_log.info(line)  # syslog and the like: through `logging`, as gunicorn does
            return
        for handler in handlers:  # a stream or a file: the line as its "%(message)s" formatter would write it
            with handler.lock:
                handler.stream.write(line + handler.terminator)
                handler.flush()


def json_error_page(sock, status_int, reason, mesg):
    """gunicorn's answer to a request it cannot parse (400, 414, 431, 501...), as the service answers errors:
    `{"detail": ...}` in JSON, and the connection closes. (gunicorn's own page is HTML that quotes the request.)"""
    from gunicorn import util

    detail = default_exceptions.get(status_int, InternalServerError).description
    body = json.dumps({"detail": detail}, separators=(",", ":"))
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    util.write_nonblock(sock, (head + body).encode("latin-1"))


# -- The database driver -------------------------------------------------------


def wait_for_postgres(connection):
    """psycopg2's wait callback under gevent: psycogreen's, which lets other greenlets run while a statement
    waits on the server; and while connecting, libpq's `connect_timeout`, which libpq applies only to the
    blocking connect that psycopg2 no longer makes once a wait callback is set."""
    import gevent
    import psycopg2
    from psycogreen.gevent import gevent_wait_callback

    if connection.status != psycopg2.extensions.STATUS_SETUP:
        gevent_wait_callback(connection)
        return
    seconds = int(connection.info.dsn_parameters.get("connect_timeout") or 0) or None
    with gevent.Timeout(seconds, psycopg2.OperationalError("timeout expired")):
        gevent_wait_callback(connection)


def make_postgres_cooperative():
    import psycopg2.extensions

    psycopg2.extensions.set_wait_callback(wait_for_postgres)


# -- Connections and request bodies ------------------------------------------


def cap_connections_per_address(worker, cap):
    """Close at once a worker's connection from an address that already holds `cap` open ones (0: no cap)."""
    if not cap:
        return
    open_per_address = Counter()
    handle = worker.handle

    def handle_under_cap(listener, client, addr):
        address = addr[0] if isinstance(addr, tuple) else ""
        if open_per_address[address] >= cap:
            worker.log.debug("Closed a connection over the cap of %s per client address", cap)
            client.close()
            return
        open_per_address[address] += 1
        try:
            handle(listener, client, addr)
        finally:
            open_per_address[address] -= 1
            if not open_per_address[address]:
                del open_per_address[address]

    worker.handle = handle_under_cap


def keep_backlog(worker):
    """Hold a second descriptor of each listening socket, so that the socket outlives the gevent server's close
    and what waits in its backlog can still be served (`serve_backlog`)."""
    worker.backlog_listeners = [listener.dup() for listener in worker.sockets]


def serve_backlog(worker):
    """A stopping worker serves the connections still waiting in its listening socket's backlog (with
    `Connection: close`, as gunicorn answers every request once stopping), then closes the socket at once.

    On SIGTERM gunicorn's master closes its copy of the socket, and the gevent worker stops accepting and closes
    its own within a second; without this, the kernel would reset the connections it completed in the meantime,
    with requests sent on them and unread. Closed this way, a client that connects afterwards is refused before
    it sends anything, and can safely retry elsewhere."""
    import gevent

    handlers = []
    for listener in getattr(worker, "backlog_listeners", ()):
        name = listener.getsockname()
        listener.setblocking(False)
        while True:
            try:
                client, address = listener.accept()
            except ConnectionAbortedError:
                continue  # that client gave up; look for the next
            except OSError:
                break  # the backlog is empty
            handlers.append(gevent.spawn(worker.handle, ListenerName(name), client, address))
        listener.close()
    gevent.joinall(handlers, timeout=worker.cfg.graceful_timeout)


class ListenerName:
    """What gunicorn asks of the listener a connection came from (its address), once the listener is closed."""

    def __init__(self, name):
        self.name = name

    def getsockname(self):
        return self.name


class BodyTimeout(RequestTimeout):
    """A request body not in by its deadline: the app answers it as any 408, and gunicorn, which sees an
    exception raised while the body was read, closes the connection after the answer (the body's end is
    unknown)."""


class RequestInput:
    """`wsgi.input` read against a deadline, and in the app's terms: gunicorn's errors about a body it cannot
    parse (a bad chunk, a client gone in the middle) quote the body, and the app would log them as unexpected;
    here they are a 400 the app answers like any other, and gunicorn closes the connection after it."""

    def __init__(self, stream, deadline):
        self.stream, self.deadline = stream, deadline

    def _within_deadline(self, read, *args):
        import gevent
        from gunicorn.http.errors import NoMoreData, ParseException

        try:
            with gevent.Timeout(max(0.0, self.deadline - monotonic()), BodyTimeout()):
                return read(*args)
        except NoMoreData:
            raise ClientDisconnected() from None
        except ParseException:
            raise BadRequest() from None

    def read(self, *args):
        return self._within_deadline(self.stream.read, *args)

    def readline(self, *args):
        return self._within_deadline(self.stream.readline, *args)

    def __iter__(self):
        return iter(self.readline, b"")


def monotonic():
    import time

    return time.monotonic()


def json_answer(status, detail, start_response):
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def timed_out(start_response):
    return json_answer("408 Request Timeout", RequestTimeout.description, start_response)


def bad_request(error, start_response):
    return json_answer(f"{error.code} {error.name}", error.description, start_response)


def with_client_deadlines(app, max_bytes, seconds):
    """A WSGI middleware that bounds the client's part of each exchange by `seconds`.

    A body of declared length (up to `max_bytes`; the app refuses a longer one
    unread) is read whole before the app runs, so the app never waits on a
    client while it holds a database connection; a chunked body is read by the
    app as it arrives. Either past the deadline: 408 in JSON, and the connection
    closes. Each send of the response waits at most `seconds` for the client to
    take some of it; a client that takes nothing for that long is disconnected.
    """

    def middleware(environ, start_response):
        environ["gunicorn.socket"].settimeout(seconds)
        declared = environ.get("CONTENT_LENGTH", "")
        stream = RequestInput(environ["wsgi.input"], monotonic() + seconds)
        try:
            if declared.isdigit() and 0 < int(declared) <= max_bytes:
                environ["wsgi.input"] = io.BytesIO(stream.read(int(declared)))
            elif environ.get("wsgi.input_terminated"):
                environ["wsgi.input"] = stream
            return app(environ, start_response)
        except BodyTimeout:
            return timed_out(start_response)
        except BadRequest as error:  # the declared body, read above
            return bad_request(error, start_response)

    return middleware


def has_chunked_body(req):
    return any(name == "TRANSFER-ENCODING" for name, _ in req.headers)


def close_after_chunked_body(req):
    """A request with a chunked body is the last on its connection: whatever of the body the app did not read
    (a 401 reads none) is never parsed to be dropped. gunicorn's chunked parser costs some 5 µs per chunk: a
    body sent in 1-byte chunks would cost seconds of CPU."""
    if has_chunked_body(req):
        req.force_close()


def linger_after_chunked_body(req, environ, seconds=2.0, max_bytes=64 * 1024):
    """Before a connection closed over an unread chunked body, drop what the client still sends for a moment,
    unparsed: a socket closed with unread bytes is reset by the kernel, and the client could lose the response
    it has not read yet."""
    import gevent

    if not has_chunked_body(req):
        return
    sock = environ.get("gunicorn.socket")
    try:
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(seconds, False):
            drained = 0
            while drained < max_bytes and (data := sock.recv(65536)):
                drained += len(data)
    except OSError:
        pass


def install_json_error_page():
    """gunicorn's one writer of error pages (`gunicorn.util.write_error`, used by `Worker.handle_error`)."""
    from gunicorn import util

    util.write_error = json_error_page
