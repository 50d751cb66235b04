"""A push's request (todo_api/reminders/outbound.py, through push.PushSender): public addresses only, the address that
was checked, a total deadline, no body read, no redirect followed.

Every connection these tests make goes to 127.0.0.1. The refusal of every other address is shown by the check
made before connecting, with a resolver of the tests' own answering what a hostile DNS server would; a test
that would connect if the check failed makes `connect_first` fail the test first.
"""

import http.client
import socket
import threading
from ipaddress import ip_address

import pytest

from support.push_service import PushService, refuse_lookups_beyond_loopback
from support.tls import self_signed
from todo_api.reminders import outbound
from todo_api.reminders.outbound import (
    Deadline,
    RefusedAddress,
    checked_addresses,
    is_public_address,
    may_connect,
    post,
)
from todo_api.reminders.push import Outcome, PushSender, VapidSigner, generate_vapid_keys

VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY = generate_vapid_keys()
SIGNER = VapidSigner(VAPID_PRIVATE_KEY, VAPID_PUBLIC_KEY, "mailto:reminders@example.com")
PAYLOAD = b'{"title": "t", "body": "Reminder", "task_id": 1, "url": "/dashboard"}'

PUBLIC = ["8.8.8.8", "1.1.1.1", "142.250.185.74", "2001:4860:4860::8888", "2a00:1450:4001:82b::200a"]
NOT_PUBLIC = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "100.127.255.254",
    "169.254.169.254",  # link-local: cloud metadata services
    "169.254.0.1",
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fc00::1",  # unique local
    "fd12:3456:789a::1",
    "fe80::1",  # link-local
    "fec0::1",  # site-local
    "ff02::1",  # multicast
    "ff0e::1",
    "::ffff:10.0.0.1",  # IPv4-mapped
    "::ffff:8.8.8.8",
    "::ffff:169.254.169.254",
    "::ffff:127.0.0.1",
    "::10.0.0.1",  # IPv4-compatible
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::808:808",
    "64:ff9b:1::a00:1",
    "2001:db8::1",  # documentation
    "100::1",  # discard-only
]


def answer(*addresses, port=443):
    """What getaddrinfo answers for a name with these addresses."""
    rows = []
    for text in addresses:
        if ":" in text:
            rows.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, port, 0, 0)))
        else:
            rows.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, port)))
    return rows


class FakeResolver:
    """Answers each look-up with the next of `answers` (the last one again once they run out), and counts them."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, host, port):
        self.calls.append((host, port))
        result = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(result, Exception):
            raise result
        return [row[:4] + ((row[4][0], port, *row[4][2:]),) for row in result]


@pytest.fixture(autouse=True)
def no_lookups_beyond_loopback(monkeypatch):
    refuse_lookups_beyond_loopback(monkeypatch)


@pytest.fixture
def no_connection(monkeypatch):
    """Fails the test if a connection is attempted at all."""
    attempts = []

    def refuse(addresses, *_):
        attempts.append(addresses)
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(outbound, "connect_first", refuse)
    return attempts


# -- The address rule -------------------------------------------------------------------


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_may_be_connected_to(address):
    assert is_public_address(ip_address(address)) is True
    assert may_connect(ip_address(address), loopback_host=False) is True


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_no_other_address_may(address):
    assert is_public_address(ip_address(address)) is False
    assert may_connect(ip_address(address), loopback_host=False) is False


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("fe80::1", False),
        ("8.8.8.8", False),
    ],
)
def test_a_loopback_host_may_be_reached_on_loopback_addresses_only(address, allowed):
    assert may_connect(ip_address(address), loopback_host=True) is allowed


# -- Resolving and pinning -----------------------------------------------------------------


@pytest.mark.parametrize("private", ["10.0.0.1", "169.254.169.254", "172.16.5.4", "192.168.1.1", "100.64.0.1"])
@pytest.mark.parametrize("allow_loopback", [False, True])
def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(private, allow_loopback):
    resolver = FakeResolver(answer(private))
    with pytest.raises(RefusedAddress):
        checked_addresses("push.example.com", 443, allow_loopback, Deadline(5), resolver)
    assert resolver.calls == [("push.example.com", 443)]


@pytest.mark.parametrize(
    "private", ["fc00::1", "fe80::1", "::ffff:169.254.169.254", "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "::1"]
)
def test_a_name_resolving_to_a_non_public_ipv6_address_is_refused(private):
    with pytest.raises(RefusedAddress):
        checked_addresses("push.example.com", 443, False, Deadline(5), FakeResolver(answer(private)))


def test_a_name_resolving_to_loopback_is_refused_even_with_insecure_endpoints():
    """Only `localhost` and loopback literals may be reached on loopback: a DNS name must lead to the internet."""
    with pytest.raises(RefusedAddress):
        checked_addresses("push.example.com", 443, True, Deadline(5), FakeResolver(answer("127.0.0.1")))


def test_only_the_public_addresses_of_a_mixed_answer_are_kept_in_the_resolvers_order():
    resolver = FakeResolver(answer("10.0.0.1", "2001:4860:4860::8888", "169.254.169.254", "8.8.8.8", "fe80::1"))
    assert checked_addresses("push.example.com", 443, False, Deadline(5), resolver) == [
        (socket.AF_INET6, ("2001:4860:4860::8888", 443, 0, 0)),
        (socket.AF_INET, ("8.8.8.8", 443)),
    ]


def test_localhost_is_reached_on_its_loopback_addresses_when_insecure_endpoints_are_allowed():
    resolver = FakeResolver(answer("::1", "127.0.0.1", "10.0.0.1"))
    assert checked_addresses("localhost", 8443, True, Deadline(5), resolver) == [
        (socket.AF_INET6, ("::1", 8443, 0, 0)),
        (socket.AF_INET, ("127.0.0.1", 8443)),
    ]
    with pytest.raises(RefusedAddress):
        checked_addresses("localhost", 8443, False, Deadline(5), FakeResolver(answer("127.0.0.1")))


def test_a_resolver_that_fails_or_never_answers_is_the_pushs_error():
    with pytest.raises(socket.gaierror):
        checked_addresses("push.example.com", 443, False, Deadline(5), FakeResolver(socket.gaierror(-2, "unknown")))
    never = threading.Event()

    def hanging(host, port):
        never.wait(30)
        return answer("8.8.8.8")

    with pytest.raises(TimeoutError):
        checked_addresses("push.example.com", 443, False, Deadline(0.2), hanging)
    never.set()


def test_the_sender_refuses_a_private_answer_without_connecting(no_connection):
    sender = PushSender(SIGNER, 5, resolve=FakeResolver(answer("10.0.0.1", "169.254.169.254", "fd00::1")))
    keys = PushService(VAPID_PUBLIC_KEY).subscription("alice")
    outcome = sender.send("https://push.example.com/push/alice", keys["p256dh"], keys["auth"], PAYLOAD)
    assert outcome == Outcome("rejected", "RefusedAddress")
    assert no_connection == []


@pytest.mark.parametrize(
    "host",
    [
        "127.1",
        "0177.0.0.1",
        "0x7f.1",
        "127.0.1",
        "2130706433",
        "%31%32%37.0.0.1",
        "169.254.43518",
        "0xa9fea9fe",
        "[::ffff:127.0.0.1]",
        "[::ffff:a9fe:a9fe]",
        "10.0.0.1",
        "[fe80::1]",
        "a" * 64 + ".example.com",
        "push.localhost",
    ],
)
def test_the_sender_refuses_an_endpoint_stored_before_the_rules_without_resolving_or_connecting(host, no_connection):
    resolver = FakeResolver(answer("8.8.8.8"))
    sender = PushSender(SIGNER, 5, allow_insecure=True, resolve=resolver)
    keys = PushService(VAPID_PUBLIC_KEY).subscription("alice")
    outcome = sender.send(f"http://{host}:8080/push/alice", keys["p256dh"], keys["auth"], PAYLOAD)
    assert outcome == Outcome("rejected", "InvalidEndpoint")
    assert (resolver.calls, no_connection) == ([], [])


@pytest.fixture
def localhost_service():
    service = PushService(VAPID_PUBLIC_KEY, host_name="localhost").start()
    yield service
    service.stop()


def test_the_connection_goes_to_the_checked_address_and_the_name_is_not_resolved_again(localhost_service):
    """DNS rebinding: the second answer (a private address) is never asked for."""
    resolver = FakeResolver(answer("127.0.0.1"), answer("10.0.0.1"))
    sender = PushSender(SIGNER, 5, allow_insecure=True, resolve=resolver)
    keys = localhost_service.subscription("alice")
    assert sender.send(keys["endpoint"], keys["p256dh"], keys["auth"], PAYLOAD) == Outcome("delivered", "201")
    assert resolver.calls == [("localhost", localhost_service.port)]
    [message] = localhost_service.messages
    assert message.headers["Host"] == f"localhost:{localhost_service.port}"
    assert localhost_service.failures == []


def test_a_refused_connection_moves_on_to_the_next_checked_address(localhost_service):
    # The service listens on 127.0.0.1 only: ::1 refuses (or is not there at all), then 127.0.0.1 takes it.
    resolver = FakeResolver(answer("::1", "127.0.0.1"))
    sender = PushSender(SIGNER, 5, allow_insecure=True, resolve=resolver)
    keys = localhost_service.subscription("alice")
    assert sender.send(keys["endpoint"], keys["p256dh"], keys["auth"], PAYLOAD) == Outcome("delivered", "201")


def test_https_is_verified_for_the_host_name_not_the_address(tmp_path):
    server_tls, client_tls = self_signed("localhost", tmp_path)
    names = []
    server_tls.sni_callback = lambda _socket, name, _context: names.append(name)
    service = PushService(VAPID_PUBLIC_KEY, host_name="localhost", tls=server_tls).start()
    try:
        resolver = FakeResolver(answer("127.0.0.1"))
        sender = PushSender(SIGNER, 5, allow_insecure=True, resolve=resolver, ssl_context=client_tls)
        keys = service.subscription("alice")
        assert keys["endpoint"].startswith("https://localhost:")
        assert sender.send(keys["endpoint"], keys["p256dh"], keys["auth"], PAYLOAD) == Outcome("delivered", "201")
        assert names == ["localhost"]
        assert len(service.payloads("alice")) == 1
    finally:
        service.stop()


def test_https_to_a_server_whose_certificate_names_another_host_is_not_sent(tmp_path):
    server_tls, _ = self_signed("push.invalid", tmp_path)
    _, client_tls = self_signed("localhost", tmp_path)
    service = PushService(VAPID_PUBLIC_KEY, host_name="localhost", tls=server_tls).start()
    try:
        sender = PushSender(
            SIGNER, 5, allow_insecure=True, resolve=FakeResolver(answer("127.0.0.1")), ssl_context=client_tls
        )
        keys = service.subscription("alice")
        outcome = sender.send(keys["endpoint"], keys["p256dh"], keys["auth"], PAYLOAD)
        assert outcome == Outcome("retry", "SSLCertVerificationError")
        assert service.requests == 0
    finally:
        service.stop()


# -- The deadline, and what is read of the answer ---------------------------------------------


def loopback_post(url, seconds):
    return post(url, b"x", {"TTL": "60"}, Deadline(seconds), allow_loopback=True)


def test_an_answer_whose_body_trickles_is_taken_from_its_headers(misbehaving):
    service = misbehaving("trickle_body", interval=5.0)
    status, headers = loopback_post(service.endpoint("victim"), 30)
    assert (status, headers["Content-Length"]) == (201, "1000000")
    assert (service.connections_opened, service.requests) == (1, 1)


def test_headers_that_trickle_past_the_deadline_are_a_timeout(misbehaving):
    service = misbehaving("trickle_headers", interval=0.1)
    with pytest.raises(TimeoutError):
        loopback_post(service.endpoint("slow"), 0.5)
    assert service.requests == 1


def test_a_push_service_that_never_answers_is_a_timeout(misbehaving):
    service = misbehaving("hang")
    with pytest.raises(TimeoutError):
        loopback_post(service.endpoint("silent"), 0.5)


def test_a_stopping_worker_cuts_a_push_waiting_for_its_answer(misbehaving):
    service = misbehaving("hang")
    in_flight = outbound.InFlight()
    raised = []

    def push():
        try:
            post(service.endpoint("silent"), b"x", {}, Deadline(60), allow_loopback=True, in_flight=in_flight)
        except Exception as error:  # noqa: BLE001 - what the push came to
            raised.append(error)

    thread = threading.Thread(target=push)
    thread.start()
    deadline = Deadline(10)
    while service.requests == 0:
        deadline.remaining()
    assert in_flight.cut() == 1
    thread.join(10)
    assert [type(error) for error in raised] == [http.client.RemoteDisconnected]
    assert in_flight.cut() == 0  # its socket was let go


def test_a_redirect_is_an_answer_not_followed(localhost_service):
    other = localhost_service.subscription("elsewhere")
    localhost_service.answer("alice", (307, {"Location": other["endpoint"]}))
    sender = PushSender(SIGNER, 5, allow_insecure=True, resolve=FakeResolver(answer("127.0.0.1")))
    keys = localhost_service.subscription("alice")
    assert sender.send(keys["endpoint"], keys["p256dh"], keys["auth"], PAYLOAD) == Outcome("rejected", "307")
    assert (localhost_service.requests, localhost_service.payloads()) == (1, [])
