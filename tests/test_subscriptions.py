"""Web Push subscriptions: `POST /api/notifications/subscribe` and `DELETE /api/notifications/unsubscribe`."""

import base64
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from support import user_id_of
from todo_api.db.connections import get_engine
from todo_api.db.tables import push_subscription

ENDPOINT = "https://fcm.googleapis.com/fcm/send/fH1e:APA91bE-x_Yz"
OTHER_ENDPOINT = "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABf"


def b64url(raw, padded=False):
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padded else text.rstrip("=")


def browser_keys():
    """A browser's subscription keys: an uncompressed P-256 point and a 16-byte secret, base64url."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {"p256dh": b64url(point), "auth": b64url(os.urandom(16))}


def subscription(endpoint=ENDPOINT):
    return {"endpoint": endpoint, **browser_keys()}


def stored(app):
    with get_engine(app).connect() as connection:
        return connection.execute(select(push_subscription).order_by(push_subscription.c.id)).all()


def frontend_headers(token):
    """What AuthContext.tsx sends with both calls: a JSON content type always, and the bearer token."""
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


# -- Subscribing ------------------------------------------------------------------


def test_the_frontends_subscribe_request_stores_the_subscription(client, token, app):
    sent = subscription()
    body = json.dumps(sent, separators=(",", ":"))  # JSON.stringify({endpoint, p256dh, auth})
    response = client.post("/api/notifications/subscribe", headers=frontend_headers(token), data=body)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert set(data) == {"id", "endpoint", "created_at", "updated_at"}  # never the keys
    assert data["endpoint"] == ENDPOINT
    assert data["created_at"] == data["updated_at"]
    datetime.fromisoformat(data["created_at"])
    [row] = stored(app)
    assert (row.id, row.endpoint, row.p256dh, row.auth) == (data["id"], ENDPOINT, sent["p256dh"], sent["auth"])


def test_the_frontends_unsubscribe_request_removes_all_of_the_callers_subscriptions(client, token, auth, app):
    client.post("/api/notifications/subscribe", headers=auth, json=subscription(ENDPOINT))
    client.post("/api/notifications/subscribe", headers=auth, json=subscription(OTHER_ENDPOINT))
    # Exactly as AuthContext.tsx sends it: DELETE, JSON content type, no body.
    response = client.delete("/api/notifications/unsubscribe", headers=frontend_headers(token))
    assert (response.status_code, response.get_json()) == (200, {"data": {"ok": True, "deleted": 2}})
    assert stored(app) == []


def test_unsubscribe_with_an_endpoint_removes_only_that_one(client, auth, app):
    client.post("/api/notifications/subscribe", headers=auth, json=subscription(ENDPOINT))
    client.post("/api/notifications/subscribe", headers=auth, json=subscription(OTHER_ENDPOINT))
    response = client.delete("/api/notifications/unsubscribe", headers=auth, json={"endpoint": ENDPOINT})
    assert response.get_json() == {"data": {"ok": True, "deleted": 1}}
    assert [row.endpoint for row in stored(app)] == [OTHER_ENDPOINT]
    again = client.delete("/api/notifications/unsubscribe", headers=auth, json={"endpoint": ENDPOINT})
    assert (again.status_code, again.get_json()) == (200, {"data": {"ok": True, "deleted": 0}})


def test_a_user_may_have_several_subscriptions(client, auth, app):
    first = client.post("/api/notifications/subscribe", headers=auth, json=subscription(ENDPOINT)).get_json()
    second = client.post("/api/notifications/subscribe", headers=auth, json=subscription(OTHER_ENDPOINT)).get_json()
    assert first["data"]["id"] != second["data"]["id"]
    assert [row.endpoint for row in stored(app)] == [ENDPOINT, OTHER_ENDPOINT]


def test_subscribing_again_replaces_the_keys_of_the_one_row(client, auth, app):
    first = client.post("/api/notifications/subscribe", headers=auth, json=subscription()).get_json()["data"]
    renewed = subscription()
    second = client.post("/api/notifications/subscribe", headers=auth, json=renewed).get_json()["data"]
    assert (second["id"], second["created_at"]) == (first["id"], first["created_at"])
    assert second["updated_at"] > first["updated_at"]
    [row] = stored(app)
    assert (row.p256dh, row.auth) == (renewed["p256dh"], renewed["auth"])


def test_an_endpoint_moves_to_the_user_who_subscribes_it(client, auth, other_auth, app):
    """One browser profile, two users in turn: the endpoint belongs to whoever subscribed it last."""
    client.post("/api/notifications/subscribe", headers=auth, json=subscription())
    alice = stored(app)[0].user_id
    renewed = subscription()
    response = client.post("/api/notifications/subscribe", headers=other_auth, json=renewed)
    assert response.status_code == 200
    [row] = stored(app)
    assert row.user_id != alice
    assert (row.p256dh, row.auth) == (renewed["p256dh"], renewed["auth"])
    # It is no longer Alice's to remove, and removing all of hers leaves it alone.
    assert client.delete("/api/notifications/unsubscribe", headers=auth, json={"endpoint": ENDPOINT}).get_json() == {
        "data": {"ok": True, "deleted": 0}
    }
    assert client.delete("/api/notifications/unsubscribe", headers=auth).get_json()["data"]["deleted"] == 0
    assert len(stored(app)) == 1
    response = client.delete("/api/notifications/unsubscribe", headers=other_auth, json={"endpoint": ENDPOINT})
    assert response.get_json() == {"data": {"ok": True, "deleted": 1}}
    assert stored(app) == []


def test_padded_keys_are_accepted_and_stored_unpadded(client, auth, app):
    sent = subscription()
    padded = {**sent, "p256dh": sent["p256dh"] + "=", "auth": sent["auth"] + "=="}
    assert client.post("/api/notifications/subscribe", headers=auth, json=padded).status_code == 200
    [row] = stored(app)
    assert (row.p256dh, row.auth) == (sent["p256dh"], sent["auth"])


def test_both_routes_need_a_session(client, auth, app):
    client.post("/api/notifications/subscribe", headers=auth, json=subscription(OTHER_ENDPOINT))
    response = client.post("/api/notifications/subscribe", json=subscription())
    assert (response.status_code, response.get_json()) == (401, {"detail": "Not authenticated"})
    response = client.delete("/api/notifications/unsubscribe", headers={"Content-Type": "application/json"})
    assert (response.status_code, response.get_json()) == (401, {"detail": "Not authenticated"})
    assert [row.endpoint for row in stored(app)] == [OTHER_ENDPOINT]


# -- What a subscription may be -------------------------------------------------------

NOT_ON_CURVE = b64url(b"\x04" + b"\x01" * 64)
COMPRESSED = b64url(b"\x02" + b"\x01" * 32)
HTTPS = "Must be an https URL."
PUBLIC_HOST = "Must be the URL of a push service on a DNS name, not an IP address or a local host."
BASE64URL = "Must be base64url."
UNCOMPRESSED = "Must be an uncompressed P-256 public key (65 bytes starting with 0x04)."

INVALID = [
    ("endpoint", "http://fcm.googleapis.com/fcm/send/x", HTTPS),
    ("endpoint", "ftp://fcm.googleapis.com/x", HTTPS),
    ("endpoint", "fcm.googleapis.com/fcm/send/x", HTTPS),
    ("endpoint", "", HTTPS),
    ("endpoint", "https://user:secret@fcm.googleapis.com/x", HTTPS),
    ("endpoint", "https://fcm.googleapis.com/x#fragment", HTTPS),
    ("endpoint", "https:///x", HTTPS),
    ("endpoint", "https://127.0.0.1/push", PUBLIC_HOST),
    ("endpoint", "https://[::1]:8443/push", PUBLIC_HOST),
    ("endpoint", "https://10.0.0.5/push", PUBLIC_HOST),
    ("endpoint", "https://localhost/push", PUBLIC_HOST),
    ("endpoint", "https://push.localhost/push", PUBLIC_HOST),
    ("endpoint", "https://intranet/push", PUBLIC_HOST),
    ("endpoint", "https://fcm.googleapis.com:99999/x", "Must be a valid URL."),
    ("endpoint", "https://fcm.googleapis.com/a b", "Must be a URL of printable ASCII characters."),
    ("endpoint", "https://fcm.googleapis.com/ä", "Must be a URL of printable ASCII characters."),
    ("endpoint", "https://fcm.googleapis.com/" + "a" * 2022, "Longer than maximum length 2048."),
    ("endpoint", 42, "Not a valid string."),
    ("endpoint", None, "Field may not be null."),
    ("p256dh", "", UNCOMPRESSED),
    ("p256dh", "not base64url!", BASE64URL),
    ("p256dh", "BA+/", BASE64URL),
    ("p256dh", "BAAAA", BASE64URL),
    ("p256dh", "BAAA===", BASE64URL),
    ("p256dh", NOT_ON_CURVE, "Must be a point on the P-256 curve."),
    ("p256dh", COMPRESSED, UNCOMPRESSED),
    ("p256dh", b64url(b"\x05" + b"\x01" * 64), UNCOMPRESSED),
    ("p256dh", b64url(b"\x04" + b"\x01" * 65), UNCOMPRESSED),
    ("p256dh", ["B"], "Not a valid string."),
    ("auth", b64url(os.urandom(15)), "Must be 16 bytes."),
    ("auth", b64url(os.urandom(17)), "Must be 16 bytes."),
    ("auth", "*" * 22, BASE64URL),
    ("auth", None, "Field may not be null."),
]


@pytest.mark.parametrize(("field", "value", "message"), INVALID)
def test_each_invalid_field_is_422_and_nothing_is_stored(client, auth, app, field, value, message):
    response = client.post("/api/notifications/subscribe", headers=auth, json={**subscription(), field: value})
    assert response.status_code == 422
    assert response.get_json() == {"detail": "Validation failed", "errors": {field: [message]}}
    assert stored(app) == []


@pytest.mark.parametrize("field", ["endpoint", "p256dh", "auth"])
def test_each_missing_field_is_422(client, auth, app, field):
    body = subscription()
    del body[field]
    response = client.post("/api/notifications/subscribe", headers=auth, json=body)
    assert response.get_json() == {
        "detail": "Validation failed",
        "errors": {field: ["Missing data for required field."]},
    }
    assert stored(app) == []


def test_an_endpoint_of_2048_characters_is_accepted(client, auth, app):
    endpoint = "https://fcm.googleapis.com/" + "a" * 2021
    assert len(endpoint) == 2048
    assert client.post("/api/notifications/subscribe", headers=auth, json=subscription(endpoint)).status_code == 200
    assert [row.endpoint for row in stored(app)] == [endpoint]


def test_http_and_local_endpoints_only_when_insecure_endpoints_are_allowed(make_app, new_session):
    app = make_app(PUSH_ALLOW_INSECURE_ENDPOINTS=True)
    with get_engine(app).begin() as connection:
        from todo_api.cli import create_user_session

        token = create_user_session(connection, app.config, "dev@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    for endpoint in ("http://127.0.0.1:8080/push/a", "https://localhost:8443/push/b"):
        assert (
            client.post("/api/notifications/subscribe", headers=headers, json=subscription(endpoint)).status_code == 200
        )
    response = client.post("/api/notifications/subscribe", headers=headers, json=subscription("ws://127.0.0.1/x"))
    assert response.get_json()["errors"] == {"endpoint": ["Must be an http or https URL."]}


# Hosts that are no public DNS name: every address form a resolver accepts (inet_aton's short, octal, hex and
# decimal forms among them), private and link-local ranges, local names, and names DNS does not allow. Refused
# with PUSH_ALLOW_INSECURE_ENDPOINTS too. (Nothing connects to them: subscribing only reads the URL.)
NOT_PUBLIC_HOSTS = [
    "127.1",
    "0177.0.0.1",
    "0x7f.1",
    "0x7f.0x0.0x0.0x1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "%31%32%37.0.0.1",
    "127.0.0.1.",
    "127.000.000.001",
    "169.254.43518",  # 169.254.169.254
    "0xa9fea9fe",
    "2852039166",
    "169.254.169.254",
    "10.0.0.1",
    "10.1",
    "012.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "192.168.1",
    "100.64.0.1",
    "0.0.0.0",
    "0",
    "255.255.255.255",
    "224.0.0.1",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[::ffff:10.0.0.1]",
    "[0:0:0:0:0:ffff:7f00:1]",
    "[::127.0.0.1]",
    "[::]",
    "[fc00::1]",
    "[fd00:ec2::254]",
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "[fec0::1]",
    "[ff02::1]",
    "[2001:4860:4860::8888]",  # a public address, but an address: push services are reached by name
    "[64:ff9b::a9fe:a9fe]",
    "[2002:a9fe:a9fe::1]",
    "push.localhost",
    "metadata.google.internal",
    "printer.local",
    "router.home.arpa",
    "1.0.0.127.in-addr.arpa",
    "push.test",
    "push.invalid",
    "intranet",
    "localhost.localdomain",
]
INVALID_NAMES = [
    "a" * 64 + ".example.com",  # a label over 63 characters
    ("a" * 62 + ".") * 4 + "com",  # 255 characters
    "xn--zz.com",  # not valid IDNA
    "ab--cd.com",
    "-push.example.com",
    "push-.example.com",
    "push_service.example.com",
    "push..example.com",
    ".example.com",
    "fcm.googleapis.com.",
    "push.example.c0m",
    "push.example.x",
]
VALID_NAME = (
    "Must be the URL of a push service on a valid DNS name: labels of 1 to 63 letters, digits or hyphens, 253 "
    "characters in all."
)


@pytest.fixture
def insecure_client(make_app, new_session):
    """A client of an app with PUSH_ALLOW_INSECURE_ENDPOINTS, and its headers."""
    app = make_app(PUSH_ALLOW_INSECURE_ENDPOINTS=True)
    with get_engine(app).begin() as connection:
        from todo_api.cli import create_user_session

        token = create_user_session(connection, app.config, "dev@example.com")
    return app, app.test_client(), {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("host", NOT_PUBLIC_HOSTS)
@pytest.mark.parametrize("insecure", [False, True], ids=["https-only", "insecure-allowed"])
def test_every_host_that_is_not_a_public_dns_name_is_422_naming_endpoint(
    client, auth, app, insecure_client, host, insecure
):
    if insecure:
        app, client, auth = insecure_client
    for scheme in ("https", "http") if insecure else ("https",):
        response = client.post(
            "/api/notifications/subscribe", headers=auth, json=subscription(f"{scheme}://{host}:8443/push/x")
        )
        assert (response.status_code, response.get_json()) == (
            422,
            {"detail": "Validation failed", "errors": {"endpoint": [PUBLIC_HOST]}},
        )
    assert stored(app) == []


@pytest.mark.parametrize("host", INVALID_NAMES)
@pytest.mark.parametrize("insecure", [False, True], ids=["https-only", "insecure-allowed"])
def test_a_host_that_is_no_valid_dns_name_is_422_naming_endpoint(client, auth, app, insecure_client, host, insecure):
    if insecure:
        app, client, auth = insecure_client
    response = client.post("/api/notifications/subscribe", headers=auth, json=subscription(f"https://{host}/push/x"))
    assert (response.status_code, response.get_json()) == (
        422,
        {"detail": "Validation failed", "errors": {"endpoint": [VALID_NAME]}},
    )
    assert stored(app) == []


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://fcm.googleapis.com/fcm/send/x",
        "https://updates.push.services.mozilla.com/wpush/v2/x",
        "https://web.push.apple.com/QGuQyavXutnMH8qd",
        "https://wns2-par02p.notify.windows.com/w/?token=BQYAAAD",
        "https://" + "a" * 63 + ".example.com/x",
        "https://" + ("a" * 62 + ".") * 3 + "a" * 59 + ".com/x",  # 253 characters
        "https://xn--bcher-kva.example.com/x",
        "https://push.xn--p1ai/x",
        "https://PUSH.Example.COM:443/x",
    ],
)
def test_public_dns_names_are_accepted(client, auth, app, endpoint):
    response = client.post("/api/notifications/subscribe", headers=auth, json=subscription(endpoint))
    assert response.status_code == 200, response.get_json()
    assert [row.endpoint for row in stored(app)] == [endpoint]


def test_only_plainly_written_loopback_hosts_are_accepted_with_insecure_endpoints(insecure_client):
    app, client, headers = insecure_client
    accepted = ["http://127.0.0.1:8080/a", "http://127.8.9.10:8080/b", "http://[::1]:8080/c", "http://localhost/d"]
    for endpoint in accepted:
        response = client.post("/api/notifications/subscribe", headers=headers, json=subscription(endpoint))
        assert response.status_code == 200, response.get_json()
    assert [row.endpoint for row in stored(app)] == accepted


# -- The cap on a user's subscriptions --------------------------------------------------


def endpoint_number(number):
    return f"https://fcm.googleapis.com/fcm/send/device-{number}"


def test_past_the_cap_the_least_recently_refreshed_subscription_is_dropped(make_app, new_session):
    app = make_app(PUSH_SUBSCRIPTIONS_PER_USER=3)
    client = app.test_client()
    alice = {"Authorization": f"Bearer {new_session('alice@example.com')}"}
    bob = {"Authorization": f"Bearer {new_session('bob@example.com')}"}
    client.post("/api/notifications/subscribe", headers=bob, json=subscription(endpoint_number("bob")))
    for number in (1, 2, 3, 1):  # device 1 visits again: now device 2 is the least recently refreshed
        response = client.post(
            "/api/notifications/subscribe", headers=alice, json=subscription(endpoint_number(number))
        )
        assert response.status_code == 200
    assert sorted(row.endpoint for row in stored(app)) == sorted(endpoint_number(n) for n in ("bob", 1, 2, 3))
    response = client.post("/api/notifications/subscribe", headers=alice, json=subscription(endpoint_number(4)))
    assert (response.status_code, response.get_json()["data"]["endpoint"]) == (200, endpoint_number(4))
    assert sorted(row.endpoint for row in stored(app)) == sorted(endpoint_number(n) for n in ("bob", 1, 3, 4))


def test_the_same_endpoint_subscribed_on_every_visit_keeps_one_row_and_drops_nothing(make_app, new_session):
    app = make_app(PUSH_SUBSCRIPTIONS_PER_USER=2)
    client = app.test_client()
    alice = {"Authorization": f"Bearer {new_session('alice@example.com')}"}
    client.post("/api/notifications/subscribe", headers=alice, json=subscription(endpoint_number("phone")))
    ids = set()
    for _ in range(20):
        response = client.post("/api/notifications/subscribe", headers=alice, json=subscription(endpoint_number(1)))
        assert response.status_code == 200
        ids.add(response.get_json()["data"]["id"])
    assert len(ids) == 1
    assert sorted(row.endpoint for row in stored(app)) == sorted([endpoint_number("phone"), endpoint_number(1)])


def test_the_default_cap_is_10(client, auth, app):
    for number in range(11):
        assert client.post("/api/notifications/subscribe", headers=auth, json=subscription(endpoint_number(number)))
    assert [row.endpoint for row in stored(app)] == [endpoint_number(number) for number in range(1, 11)]


def test_an_endpoint_taken_from_another_user_counts_against_the_callers_cap(make_app, new_session):
    app = make_app(PUSH_SUBSCRIPTIONS_PER_USER=2)
    client = app.test_client()
    alice = {"Authorization": f"Bearer {new_session('alice@example.com')}"}
    bob = {"Authorization": f"Bearer {new_session('bob@example.com')}"}
    client.post("/api/notifications/subscribe", headers=bob, json=subscription(endpoint_number("shared")))
    client.post("/api/notifications/subscribe", headers=alice, json=subscription(endpoint_number(1)))
    client.post("/api/notifications/subscribe", headers=alice, json=subscription(endpoint_number(2)))
    client.post("/api/notifications/subscribe", headers=alice, json=subscription(endpoint_number("shared")))
    alices = user_id_of(app, alice["Authorization"].split()[1])
    assert sorted((row.user_id == alices, row.endpoint) for row in stored(app)) == [
        (True, endpoint_number(2)),
        (True, endpoint_number("shared")),
    ]


def test_concurrent_subscriptions_of_one_user_keep_to_the_cap(make_app, new_session):
    app = make_app(PUSH_SUBSCRIPTIONS_PER_USER=3)
    headers = {"Authorization": f"Bearer {new_session('alice@example.com')}"}
    barrier = threading.Barrier(12, timeout=30)

    def send(number):
        client = app.test_client()
        barrier.wait()
        return client.post("/api/notifications/subscribe", headers=headers, json=subscription(endpoint_number(number)))

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(send, range(12)))
    assert [response.status_code for response in responses] == [200] * 12
    assert len(stored(app)) == 3


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"endpoint": None}, {"endpoint": ["Field may not be null."]}),
        ({}, {"endpoint": ["Missing data for required field."]}),
        ({"endpoint": "x" * 2049}, {"endpoint": ["Longer than maximum length 2048."]}),
    ],
)
def test_an_unsubscribe_body_without_a_usable_endpoint_is_422_and_removes_nothing(client, auth, app, body, errors):
    client.post("/api/notifications/subscribe", headers=auth, json=subscription())
    response = client.delete("/api/notifications/unsubscribe", headers=auth, json=body)
    assert (response.status_code, response.get_json()) == (422, {"detail": "Validation failed", "errors": errors})
    assert len(stored(app)) == 1


def test_a_malformed_body_is_400_and_removes_nothing(client, auth, app):
    client.post("/api/notifications/subscribe", headers=auth, json=subscription())
    response = client.delete(
        "/api/notifications/unsubscribe", headers={**auth, "Content-Type": "application/json"}, data="{"
    )
    assert response.status_code == 400
    response = client.post(
        "/api/notifications/subscribe", headers={**auth, "Content-Type": "application/json"}, data="["
    )
    assert response.status_code == 400
    assert len(stored(app)) == 1


@pytest.mark.parametrize(
    ("path", "method"),
    [("/api/notifications/subscribe", "POST"), ("/api/notifications/unsubscribe", "DELETE"), ("/api/settings", "PUT")],
)
def test_the_frontends_preflight_is_allowed_without_a_session(client, path, method):
    response = client.options(
        path,
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert method in {item.strip() for item in response.headers["Access-Control-Allow-Methods"].split(",")}
