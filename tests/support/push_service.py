"""A Web Push service of the tests' own, on 127.0.0.1, that checks what a real one would.

Every request must carry an RFC 8292 VAPID `Authorization: vapid t=<JWT>, k=<key>`
whose key is the service's public key, whose JWT is ES256-signed by it, names
this server's origin as `aud`, expires in the future (within 24 hours) and has a
`mailto:` or `https:` `sub`; and an RFC 8291 `aes128gcm` body that decrypts with
the subscription's private key and auth secret, made here by `subscription()`.
A request that passes is recorded (the decrypted JSON payload, per endpoint)
and answered 201, or with whatever the test scripted for that endpoint; one
that fails is recorded in `failures` and answered 400.

`MisbehavingService` is a push service that answers badly (slowly, in drips,
or never), counting the connections it is given.
"""

import base64
import json
import os
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAX_TOKEN_LIFETIME = 24 * 60 * 60
LOOPBACK_NAMES = (None, "localhost", "127.0.0.1", "::1")


def refuse_lookups_beyond_loopback(monkeypatch):
    """Make any look-up of a name other than `localhost` (or a loopback address) fail, for the rest of the test:
    no test asks a DNS server anything, whatever the code under test does."""
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in LOOPBACK_NAMES:
            raise AssertionError("a test looked up a name beyond this machine")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Message:
    name: str
    payload: dict
    headers: dict


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a connection per push, several at once: socketserver's 5 would drop some SYNs

    def handle_error(self, request, client_address):
        pass  # a client that gave up waiting (a timeout test) closed its end: nothing to report


class PushService:
    """`host_name`: the name its endpoints carry (`localhost`, for the tests of a resolved name), which the VAPID
    token's `aud` must name too; `tls`: a server-side SSLContext, to serve https."""

    def __init__(self, vapid_public_key, port=0, verify=True, host_name="127.0.0.1", tls=None):
        self.vapid_public_key = vapid_public_key
        self.port = port
        self.verify = verify  # False: count requests only (for the benchmark's figure without this side's work)
        self.host_name = host_name
        self.tls = tls
        self.keys = {}  # endpoint name -> (private key, auth secret)
        self.messages = []
        self.failures = []
        self.requests = 0  # requests received (counted on arrival, before any delay)
        self.connections_opened = 0
        self.delay = 0.0
        self.scripts = defaultdict(deque)  # endpoint name -> [(status, headers), ...] to answer first
        self.lock = threading.Lock()
        self.server = None
        self.connections = set()

    # -- Subscriptions and scripts --------------------------------------------------

    @property
    def origin(self):
        return f"{'https' if self.tls else 'http'}://{self.host_name}:{self.port}"

    def subscription(self, name):
        """A new browser subscription at this service: {"endpoint", "p256dh", "auth"}, as the frontend sends it."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        self.keys[name] = (private_key, auth)
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": f"{self.origin}/push/{name}", "p256dh": b64url_encode(point), "auth": b64url_encode(auth)}

    def answer(self, name, *responses):
        """Answer the next requests to endpoint `name` with these (status, headers) before 201s again."""
        with self.lock:
            self.scripts[name].extend(responses)

    def payloads(self, name=None):
        with self.lock:
            return [message.payload for message in self.messages if name is None or message.name == name]

    # -- Serving ---------------------------------------------------------------------

    def start(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real push services

            def setup(self):
                super().setup()
                with service.lock:
                    service.connections.add(self.connection)
                    service.connections_opened += 1

            def finish(self):
                with service.lock:
                    service.connections.discard(self.connection)
                super().finish()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers = service.handle(self.path, self.headers, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = Server(("127.0.0.1", self.port), Handler)
        if self.tls:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self):
        """Stop listening and cut every open connection: from now on, connections are refused."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for connection in list(self.connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- Checking a push ---------------------------------------------------------------

    def handle(self, path, headers, body):
        with self.lock:
            self.requests += 1
        if self.delay:
            time.sleep(self.delay)
        name = path.rsplit("/", 1)[-1]
        if not self.verify:
            return 201, {}
        try:
            self.check_vapid(headers.get("Authorization", ""))
            payload = self.decrypt(name, headers, body)
        except (AssertionError, ValueError, KeyError, InvalidSignature) as error:
            with self.lock:
                self.failures.append(f"{name}: {type(error).__name__}: {error}")
            return 400, {}
        with self.lock:
            scripted = self.scripts[name].popleft() if self.scripts[name] else None
            if scripted is None:
                self.messages.append(Message(name, payload, dict(headers)))
        return scripted or (201, {})

    def check_vapid(self, authorization):
        scheme, _, params = authorization.partition(" ")
        assert scheme == "vapid", f"scheme {scheme!r}"
        parts = dict(item.strip().split("=", 1) for item in params.split(","))
        assert parts["k"] == self.vapid_public_key, "k is not the service's VAPID key"
        header_b64, claims_b64, signature_b64 = parts["t"].split(".")
        assert json.loads(b64url_decode(header_b64)) == {"typ": "JWT", "alg": "ES256"}
        signature = b64url_decode(signature_b64)
        assert len(signature) == 64, "ES256 signature is r || s, 64 bytes"
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(parts["k"]))
        public_key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        claims = json.loads(b64url_decode(claims_b64))
        assert claims["aud"] == self.origin, f"aud {claims['aud']!r}"
        now = time.time()
        assert now < claims["exp"] <= now + MAX_TOKEN_LIFETIME, "exp"
        assert claims["sub"].startswith(("mailto:", "https:")), "sub"

    def decrypt(self, name, headers, body):
        assert headers.get("Content-Encoding") == "aes128gcm", "Content-Encoding"
        assert int(headers["TTL"]) >= 0, "TTL"
        private_key, auth = self.keys[name]
        plaintext = http_ece.decrypt(body, private_key=private_key, auth_secret=auth, version="aes128gcm")
        return json.loads(plaintext)


class MisbehavingService:
    """A push service on 127.0.0.1 that reads each request and then, as `behaviour` says:

    - `trickle_body`: answers 201 with `Content-Length: 1000000`, then sends one byte of the body every
      `interval` seconds;
    - `trickle_headers`: sends the status line, then one byte of a header every `interval` seconds;
    - `hang`: says nothing at all.

    It counts the connections it is given and the requests it read, and notes each connection the client
    closed."""

    def __init__(self, behaviour, interval=5.0):
        self.behaviour = behaviour
        self.interval = interval
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections_opened = 0
        self.requests = 0
        self.closed_by_client = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def origin(self):
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, name):
        return f"{self.origin}/push/{name}"

    def _accept(self):
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections_opened += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection):
        with connection:
            try:
                self._read_request(connection)
                with self.lock:
                    self.requests += 1
                if self.behaviour == "trickle_body":
                    connection.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 1000000\r\n\r\n")
                    self._drip(connection, b"x" * 1000000)
                elif self.behaviour == "trickle_headers":
                    connection.sendall(b"HTTP/1.1 201 Created\r\n")
                    self._drip(connection, b"X-Slow: " + b"y" * 1000000)
                else:
                    self.stopped.wait()
            except OSError:
                with self.lock:
                    self.closed_by_client += 1

    def _drip(self, connection, data):
        for index in range(len(data)):
            if self.stopped.wait(self.interval):
                return
            connection.sendall(data[index : index + 1])

    @staticmethod
    def _read_request(connection):
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before the request was read")
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before the body was read")
            body += chunk

    def stop(self):
        self.stopped.set()
        self.listener.close()
