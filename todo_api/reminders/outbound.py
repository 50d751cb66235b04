"""One POST to a push service: to public addresses only, to the address that was checked, within a total deadline.

A push endpoint is a URL a user gave us, so the request it leads to is made
with care:

- The host is resolved once, in a thread of its own (a resolver that never
  answers costs the push its deadline, nothing more), and every address of the
  answer is checked (`may_connect`): a DNS name must lead to public addresses
  only. The connection is made to an address that passed, never to the name
  again, so an answer that changes between the check and the connection (DNS
  rebinding) changes nothing.
- TLS is negotiated for the host name (SNI, and the certificate checked
  against the name, as for any https request), and the Host header names it.
- Each step (resolving, connecting, the TLS handshake, sending, reading the
  status line and the headers) is given only the time left until the push's
  deadline; the answer's body is never read: the connection is closed once the
  headers are in, so a push service that trickles its answer holds nobody up.
- No redirect is followed: a 3xx is an answer like any other.

With `allow_loopback` (PUSH_ALLOW_INSECURE_ENDPOINTS: tests, a push service of
one's own on this machine), an endpoint on `localhost`, 127.x.y.z or [::1] may
be reached on a loopback address, and only there; a DNS name must still lead to
public addresses.

Nothing here puts an endpoint or an address in an exception's text.
"""

import http.client
import io
import os
import socket
import ssl
import threading
import time
from ipaddress import IPv4Network, IPv6Network, ip_address
from urllib.parse import urlsplit

from todo_api.reminders.endpoints import is_loopback_host

DEFAULT_PORTS = {"https": 443, "http": 80}
# IPv6 prefixes that stand for IPv4 addresses (NAT64, the well-known and the local-use one) or for a network
# that is not the internet (site-local, deprecated but still routed by some).
NOT_PUBLIC_IPV6 = (
    IPv6Network("64:ff9b::/96"),
    IPv6Network("64:ff9b:1::/48"),
    IPv6Network("fec0::/10"),
)
LOOPBACK_IPV4 = IPv4Network("127.0.0.0/8")


class RefusedAddress(Exception):
    """The endpoint's host leads to no address this service connects to."""


class Deadline:
    """A moment `seconds` from now; `remaining()` is the time left, and raises TimeoutError once none is."""

    def __init__(self, seconds):
        self.at = time.monotonic() + seconds

    def remaining(self):
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the push's deadline has passed")
        return left


# -- Which addresses -------------------------------------------------------------------


def is_public_address(address):
    """True for an address on the public internet: globally routable unicast, and not an IPv6 form of an IPv4
    address (mapped, compatible, 6to4, Teredo, NAT64), whose IPv4 side could be anything."""
    if not address.is_global or address.is_multicast or address.is_reserved or address.is_link_local:
        return False
    if address.is_private or address.is_loopback or address.is_unspecified:
        return False
    if address.version == 6:
        if address.ipv4_mapped or address.sixtofour or address.teredo or address.is_site_local:
            return False
        return not any(address in network for network in NOT_PUBLIC_IPV6)
    return True


def is_loopback_address(address):
    """127.0.0.0/8 or ::1, written either way, and no IPv6 form of an IPv4 address."""
    if address.version == 4:
        return address in LOOPBACK_IPV4
    return address.ipv4_mapped is None and address.is_loopback


def may_connect(address, loopback_host):
    """The rule for an address the host resolved to: a loopback host (`localhost`, 127.x.y.z, ::1, when
    insecure endpoints are allowed) to loopback addresses only, any other host to public addresses only."""
    return is_loopback_address(address) if loopback_host else is_public_address(address)


def system_resolve(host, port):
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def resolve_within(resolve, host, port, deadline):
    """`resolve(host, port)`'s answer (getaddrinfo's form), given until the deadline: it runs in a daemon thread,
    which a resolver that never answers keeps, and the worker does not wait for at exit."""
    result = {}
    done = threading.Event()

    def run():
        try:
            result["answer"] = resolve(host, port)
        except Exception as error:  # noqa: BLE001 - handed to the caller
            result["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name="resolve", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise TimeoutError("the host was not resolved before the push's deadline")
    if "error" in result:
        raise result["error"]
    return result["answer"]


def checked_addresses(host, port, allow_loopback, deadline, resolve=system_resolve):
    """The socket addresses to connect to for `host` ((family, sockaddr) pairs, in the resolver's order): those
    of its answer that `may_connect` allows. RefusedAddress when there are none."""
    loopback_host = allow_loopback and is_loopback_host(host)
    permitted = []
    for family, _type, _proto, _name, sockaddr in resolve_within(resolve, host, port, deadline):
        try:
            address = ip_address(sockaddr[0])
        except ValueError:  # not an address at all (an IPv6 one with a zone, say)
            continue
        if family in (socket.AF_INET, socket.AF_INET6) and may_connect(address, loopback_host):
            if (family, sockaddr) not in permitted:
                permitted.append((family, sockaddr))
    if not permitted:
        raise RefusedAddress("the endpoint's host leads to no public address")
    return permitted


def connect_first(addresses, deadline, in_flight):
    """A TCP connection to the first of `addresses` that takes one before the deadline, held in `in_flight`."""
    failure = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        in_flight.add(sock.fileno())
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(sockaddr)
        except OSError as error:  # TimeoutError among them
            in_flight.discard(sock.fileno())
            sock.close()
            failure = error
            if isinstance(error, TimeoutError):
                break
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure


class InFlight:
    """The connections of the pushes in flight, which a stopping worker may cut short (`cut`): a push waiting
    for its answer then ends at once, as if the push service had closed the connection."""

    def __init__(self):
        self._lock = threading.Lock()
        self._descriptors = set()

    def add(self, descriptor):
        with self._lock:
            self._descriptors.add(descriptor)

    def discard(self, descriptor):
        """Before its socket is closed, so that `cut` never touches a descriptor that was given to another."""
        with self._lock:
            self._descriptors.discard(descriptor)

    def cut(self):
        """Shut down every connection in flight; returns how many."""
        with self._lock:
            for descriptor in self._descriptors:
                try:
                    with socket.socket(fileno=os.dup(descriptor)) as view:
                        view.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not connected yet: its connect has the deadline's bound
            return len(self._descriptors)


# -- Talking to it ---------------------------------------------------------------------


class DeadlineSocket:
    """A connected socket as http.client uses one (sendall, makefile, close), each call given only the time left
    until the deadline."""

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline

    def sendall(self, data):
        view = memoryview(data).cast("B")
        while view:
            self.sock.settimeout(self.deadline.remaining())
            sent = self.sock.send(view)
            view = view[sent:]

    def recv_into(self, buffer):
        self.sock.settimeout(self.deadline.remaining())
        return self.sock.recv_into(buffer)

    def makefile(self, mode="rb"):
        assert mode == "rb", mode
        return io.BufferedReader(_Reader(self))

    def close(self):
        """Nothing: `post` closes the socket itself, once it is out of `InFlight`."""


class _Reader(io.RawIOBase):
    def __init__(self, sock):
        super().__init__()
        self.sock = sock

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.sock.recv_into(buffer)


def host_header(host, port, scheme):
    name = f"[{host}]" if ":" in host else host
    return name if port == DEFAULT_PORTS[scheme] else f"{name}:{port}"


def post(url, body, headers, deadline, allow_loopback=False, resolve=system_resolve, ssl_context=None, in_flight=None):
    """POST `body` to `url` (an endpoint `webpush.endpoint_problem` accepts) as the module says; returns the
    answer's (status, headers) without reading its body. Raises RefusedAddress, TimeoutError, OSError (ssl's
    errors among them) or http.client.HTTPException."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]
    in_flight = in_flight or InFlight()
    sock = connect_first(checked_addresses(host, port, allow_loopback, deadline, resolve), deadline, in_flight)
    descriptor = sock.fileno()
    try:
        if parts.scheme == "https":
            context = ssl_context or default_ssl_context()
            sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)  # same descriptor
            sock.settimeout(deadline.remaining())  # the whole handshake, not each read
            sock.do_handshake()
        connection = http.client.HTTPConnection(host, port)
        connection.sock = DeadlineSocket(sock, deadline)  # so it never connects by itself
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, body, {**headers, "Host": host_header(host, port, parts.scheme)})
        response = connection.getresponse()
        return response.status, response.msg
    finally:
        in_flight.discard(descriptor)
        sock.close()


_ssl_context = None
_ssl_context_lock = threading.Lock()


def default_ssl_context():
    """The system's trusted certificates, host names checked: made once, shared by every thread."""
    global _ssl_context
    with _ssl_context_lock:
        if _ssl_context is None:
            _ssl_context = ssl.create_default_context()
        return _ssl_context
