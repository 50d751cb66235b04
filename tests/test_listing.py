"""Finding tasks: every filter, sort and page of `GET /api/tasks`, on both databases."""

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import orjson
import pytest
from itsdangerous import URLSafeSerializer
from sqlalchemy import event, text

from support import user_id_of
from todo_api.db.connections import get_engine
from todo_api.tasks import listing


def iso(dt):
    return dt.isoformat()


NOW = datetime.now(UTC).replace(microsecond=0)


def titles(response):
    assert response.status_code == 200, response.get_json()
    return [task["title"] for task in response.get_json()["data"]]


@pytest.fixture
def listed(client, auth):
    def get(path="/api/tasks", **params):
        return client.get(f"{path}?{urlencode(params)}" if params else path, headers=auth)

    return get


@pytest.fixture
def sample(client, auth, create_task):
    """Five tasks with distinct values in every field the list can filter or sort on."""
    specs = [
        dict(
            title="Buy milk",
            priority="low",
            category="home",
            tags=["errand", "food"],
            due_date=iso(NOW + timedelta(days=2)),
            description="two litres",
        ),
        dict(
            title="alpha report",
            priority="high",
            category="work",
            tags=["report"],
            due_date=iso(NOW - timedelta(days=1)),
        ),
        dict(title="Call mum", priority="medium", category="home", tags=["family"]),
        dict(
            title="Zebra crossing",
            priority="high",
            category=None,
            tags=["errand"],
            due_date=iso(NOW + timedelta(days=10)),
        ),
        dict(
            title="Dentist",
            priority="medium",
            category="health",
            tags=[],
            due_date=iso(NOW - timedelta(days=3)),
            description="Bring the X-ray",
        ),
    ]
    tasks = [create_task(**spec) for spec in specs]
    # "Dentist" is done: completed tasks are never overdue.
    client.patch(f"/api/tasks/{tasks[4]['id']}/complete", headers=auth, json={"completed": True})
    return tasks


def test_default_is_every_task_newest_first(listed, sample):
    assert titles(listed()) == ["Dentist", "Zebra crossing", "Call mum", "alpha report", "Buy milk"]
    assert "next_cursor" not in listed().get_json()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "all"}, ["Dentist", "Zebra crossing", "Call mum", "alpha report", "Buy milk"]),
        ({"status": "completed"}, ["Dentist"]),
        ({"status": "pending"}, ["Zebra crossing", "Call mum", "alpha report", "Buy milk"]),
        ({"priority": "high"}, ["Zebra crossing", "alpha report"]),
        ({"priority": "low,medium"}, ["Dentist", "Call mum", "Buy milk"]),
        ({"category": "home"}, ["Call mum", "Buy milk"]),
        ({"tags": "errand"}, ["Zebra crossing", "Buy milk"]),
        ({"tags": "errand,food"}, ["Buy milk"]),
        ({"tags": "errand,family"}, []),
        ({"q": "MILK"}, ["Buy milk"]),
        ({"q": "x-ray"}, ["Dentist"]),
        ({"q": "litres"}, ["Buy milk"]),
        ({"due_before": iso(NOW)}, ["Dentist", "alpha report"]),
        ({"due_after": iso(NOW)}, ["Zebra crossing", "Buy milk"]),
        ({"due_after": iso(NOW), "due_before": iso(NOW + timedelta(days=5))}, ["Buy milk"]),
        ({"overdue": "true"}, ["alpha report"]),
        ({"overdue": "false"}, ["Dentist", "Zebra crossing", "Call mum", "Buy milk"]),
        ({"status": "pending", "priority": "high", "tags": "errand"}, ["Zebra crossing"]),
    ],
)
def test_filters(listed, sample, params, expected):
    assert titles(listed(**params)) == expected


@pytest.mark.parametrize(
    ("sort_by", "ascending"),
    [
        ("created_at", ["Buy milk", "alpha report", "Call mum", "Zebra crossing", "Dentist"]),
        ("title", ["Buy milk", "Call mum", "Dentist", "Zebra crossing", "alpha report"]),
        ("due_date", ["Dentist", "alpha report", "Buy milk", "Zebra crossing", "Call mum"]),
        ("priority", ["Buy milk", "Call mum", "Dentist", "alpha report", "Zebra crossing"]),
        ("updated_at", ["Buy milk", "alpha report", "Call mum", "Zebra crossing", "Dentist"]),
    ],
)
def test_sorts_both_ways(listed, sample, sort_by, ascending):
    assert titles(listed(sort_by=sort_by, sort_order="asc")) == ascending
    descending = titles(listed(sort_by=sort_by, sort_order="desc"))
    if sort_by == "due_date":  # without a due date: last either way
        assert descending == ["Zebra crossing", "Buy milk", "alpha report", "Dentist", "Call mum"]
    elif sort_by == "priority":  # high > medium > low; ties on id, in the same direction
        assert descending == ["Zebra crossing", "alpha report", "Dentist", "Call mum", "Buy milk"]
    else:
        assert descending == ascending[::-1]


@pytest.mark.parametrize("sort_by", ["created_at", "updated_at", "due_date", "priority", "title"])
@pytest.mark.parametrize("sort_order", ["asc", "desc"])
def test_cursor_walk_returns_every_task_once_in_order(client, auth, create_task, listed, sort_by, sort_order):
    """Many ties (same title, priority, due date) so the id tie-breaker is exercised."""
    for n in range(13):
        due = iso(NOW + timedelta(days=n % 3)) if n % 4 else None
        create_task(title=f"t{n % 2}", priority=("low", "medium", "high")[n % 3], due_date=due)
    whole = listed(sort_by=sort_by, sort_order=sort_order).get_json()["data"]
    assert len(whole) == 13
    walked, cursor, pages = [], None, 0
    while True:
        params = {"sort_by": sort_by, "sort_order": sort_order, "limit": 4}
        if cursor:
            params["cursor"] = cursor
        body = listed(**params).get_json()
        walked += body["data"]
        pages += 1
        cursor = body.get("next_cursor")
        if cursor is None:
            break
    assert [t["id"] for t in walked] == [t["id"] for t in whole]
    assert pages == 4


def test_cursor_walk_with_concurrent_inserts_and_deletes_neither_skips_nor_repeats(client, auth, create_task, listed):
    ids = [create_task(title=f"t{n}")["id"] for n in range(10)]  # newest first: ids[9] .. ids[0]
    first = listed(limit=4).get_json()
    assert [t["id"] for t in first["data"]] == ids[9:5:-1]
    newer = create_task(title="inserted after the first page")
    assert client.delete(f"/api/tasks/{ids[4]}", headers=auth).status_code == 200
    second = listed(limit=4, cursor=first["next_cursor"]).get_json()
    assert [t["id"] for t in second["data"]] == [ids[5], ids[3], ids[2], ids[1]]
    third = listed(limit=4, cursor=second["next_cursor"]).get_json()
    assert [t["id"] for t in third["data"]] == [ids[0]]
    assert "next_cursor" not in third
    assert newer["id"] not in [t["id"] for t in first["data"] + second["data"] + third["data"]]


def test_without_limit_the_response_stops_at_the_ceiling(client, auth, create_task, listed, monkeypatch):
    monkeypatch.setattr(listing, "CEILING", 3)
    for n in range(5):
        create_task(title=f"t{n}")
    body = listed().get_json()
    assert [t["title"] for t in body["data"]] == ["t4", "t3", "t2"]
    rest = listed(cursor=body["next_cursor"]).get_json()
    assert [t["title"] for t in rest["data"]] == ["t1", "t0"]
    assert "next_cursor" not in rest


def test_the_ceiling_is_a_thousand():
    assert listing.CEILING == 1000


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": "low,,high"}, "priority"),
        ({"sort_by": "colour"}, "sort_by"),
        ({"sort_order": "up"}, "sort_order"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"q": "x" * 101}, "q"),
        ({"due_before": "2026-01-01T00"}, "due_before"),
        ({"due_before": ""}, "due_before"),
        ({"due_after": "2026-13-01"}, "due_after"),
        ({"due_after": "tomorrow"}, "due_after"),
        ({"overdue": "yes"}, "overdue"),
        ({"reminder_due": "1"}, "reminder_due"),
        ({"tags": ","}, "tags"),
        ({"category": "c" * 101}, "category"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(listed, params, field):
    response = listed(**params)
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == [field]


def test_edited_cursor_is_422(listed, create_task):
    for n in range(3):
        create_task(title=f"t{n}")
    cursor = listed(limit=1).get_json()["next_cursor"]
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    response = listed(limit=1, cursor=tampered)
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"cursor": ["Not a valid cursor."]}
    other_sort = listed(limit=1, cursor=cursor, sort_by="title")
    assert other_sort.status_code == 422
    assert other_sort.get_json()["errors"] == {"cursor": ["The cursor belongs to another sort order."]}


CURSOR_KEY = "cursor-test-key-0123456789abcdef"
VALID_CURSOR_VALUES = {  # each one sorts before the task the test creates
    "created_at": "9998-11-25T08:00:00.123456",
    "updated_at": "9998-11-25T08:00:00",
    "due_date": "9998-11-25T08:00:00",
    "priority": "high",
    "title": "zz",
}
NOT_A_DATE = [None, True, 5, 1.5, ["a"], {"a": 1}, "", "not-a-date", "2026-11-25T08:00:00+00:00", "2026-13-01T00:00:00"]
MALFORMED_VALUES = {
    "created_at": NOT_A_DATE,
    "updated_at": NOT_A_DATE,
    "due_date": NOT_A_DATE[1:],  # null is where tasks without a due date begin
    "priority": [None, True, 2, "urgent", "HIGH", ["high"], {"high": 1}],
    "title": [None, True, 5, ["a"], {"a": "b"}, "a\x00b", "\ud800"],
}
MALFORMED_IDS = ["1", True, None, 1.5, 0, -1, 2**31, 2**70, [1], {"id": 1}]


def malformed_cursor_contents(sort_by):
    """Cursor contents that `Cursors.dump` never writes for this sort (descending)."""
    value = VALID_CURSOR_VALUES[sort_by]
    return [
        *([sort_by, True, bad, 1] for bad in MALFORMED_VALUES[sort_by]),
        *([sort_by, True, value, bad] for bad in MALFORMED_IDS),
        [sort_by, True, value],
        [sort_by, True, value, 1, 2],
        [sort_by, "true", value, 1],
        [sort_by, 1, value, 1],
        [sort_by],
        [],
        {"sort_by": sort_by, "descending": True, "value": value, "id": 1},
        "abcd",
        5,
        None,
    ]


@pytest.mark.parametrize("sort_by", list(listing.SORT_KEYS))
def test_a_signed_cursor_with_malformed_content_is_422(make_app, auth, sort_by):
    """A cursor signed with the app's key but not written by it (a leaked key, an old version) is refused, not run."""
    client = make_app(SECRET_KEY=CURSOR_KEY).test_client()
    # The standard json module writes a lone surrogate as an escape, as a forger would.
    sign = URLSafeSerializer(CURSOR_KEY, salt=listing.CURSOR_SALT, serializer=json).dumps
    client.post("/api/tasks", json={"title": "z"}, headers=auth)

    def listed_after(content):
        return client.get(f"/api/tasks?{urlencode({'sort_by': sort_by, 'cursor': sign(content)})}", headers=auth)

    for content in malformed_cursor_contents(sort_by):
        response = listed_after(content)
        assert (response.status_code, response.get_json()) == (
            422,
            {"detail": "Validation failed", "errors": {"cursor": ["Not a valid cursor."]}},
        ), content
    well_formed = [[sort_by, True, VALID_CURSOR_VALUES[sort_by], 2**31 - 1]]
    if sort_by == "due_date":
        well_formed.append([sort_by, True, None, 2**31 - 1])
    for content in well_formed:
        response = listed_after(content)
        assert (response.status_code, [task["title"] for task in response.get_json()["data"]]) == (200, ["z"])


HOSTILE = ["'", "%", "_", "\\", "'; DROP TABLE task; --", '" OR 1=1 --', "%_\\%", "' OR ''='", "ñ%"]
# What a regular expression would take for more than itself (Postgres matches `q` as a literal one).
HOSTILE += [".*", "a|p", "(?i)x", "[a-z]", "\\d", "$^", "***=.", "x{0}", "***:."]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_match_literally(client, auth, create_task, listed, value):
    create_task(title="plain", category="plain", tags=["plain"])
    literal = create_task(title=f"has {value} inside", category=value, tags=[value])
    assert [t["id"] for t in listed(q=value).get_json()["data"]] == [literal["id"]]
    assert [t["id"] for t in listed(category=value).get_json()["data"]] == [literal["id"]]
    if "," not in value:
        assert [t["id"] for t in listed(tags=value).get_json()["data"]] == [literal["id"]]
    for param in ["status", "priority", "sort_by", "sort_order", "limit", "due_before", "overdue", "cursor"]:
        assert listed(**{param: value}).status_code == 422
    assert len(listed().get_json()["data"]) == 2


def test_search_alias_takes_a_keyword(listed, sample):
    assert titles(listed("/api/tasks/search", keyword="milk")) == ["Buy milk"]
    assert titles(listed("/api/tasks/search", keyword="a", sort_by="title", sort_order="asc", status="pending")) == [
        "Call mum",
        "Zebra crossing",
        "alpha report",
    ]
    missing = listed("/api/tasks/search")
    assert missing.status_code == 422
    assert missing.get_json()["errors"] == {"keyword": ["Missing data for required field."]}


def test_filter_sort_alias_answers_like_the_list(listed, sample):
    params = {"status": "pending", "priority": "high,medium", "sort_by": "priority", "sort_order": "asc"}
    assert listed("/api/tasks/filter-sort", **params).get_json() == listed(**params).get_json()
    assert titles(listed("/api/tasks/filter-sort", **params)) == ["Call mum", "alpha report", "Zebra crossing"]


def test_aliases_require_a_session(client):
    assert client.get("/api/tasks/search?keyword=x").status_code == 401
    assert client.get("/api/tasks/filter-sort").status_code == 401


def test_filters_never_cross_users(client, other_auth, listed, sample):
    intruder = [{"q": "milk"}, {"category": "home"}, {"tags": "errand"}, {"status": "completed"}]
    for params in intruder:
        response = client.get(f"/api/tasks?{urlencode(params)}", headers=other_auth)
        assert response.get_json() == {"data": []}


# -- Cost bounds: the byte cap, the search's matcher, time bound and statement ---------------------------------


def max_size_task(n):
    """A task at every documented maximum, with characters that JSON writes in two bytes."""
    return {
        "title": f"{n:03d} " + "T" * 251,
        "description": ('é"\\' * 3334)[:10_000],
        "category": "c" * 100,
        "tags": [f"{i:02d}" + "g" * 48 for i in range(50)],
    }


def walk(listed, path="/api/tasks", **params):
    """Every page of a listing, following next_cursor: the responses."""
    responses, cursor = [], None
    while True:
        response = listed(path, **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.get_json()
        responses.append(response)
        cursor = response.get_json().get("next_cursor")
        if cursor is None:
            return responses


def serialized_size(task):
    return len(orjson.dumps(task))


def test_pages_of_large_tasks_stop_at_the_byte_cap_and_the_cursors_yield_every_task_once(app, client, auth, listed):
    created = [client.post("/api/tasks", json=max_size_task(n), headers=auth).get_json()["data"] for n in range(200)]
    cap = app.config["RESPONSE_MAX_BYTES"]
    assert cap == 1024 * 1024
    assert sum(serialized_size(task) for task in created) > 4 * cap  # max-size tasks: about 23 KB each
    for params in [{}, {"limit": 100}, {"sort_by": "title", "sort_order": "asc"}]:
        pages = walk(listed, **params)
        tasks = [task for page in pages for task in page.get_json()["data"]]
        assert tasks == (created if params.get("sort_order") == "asc" else created[::-1]), params
        assert len(pages) == 5, params
        for page, following in zip(pages, pages[1:], strict=False):
            assert len(page.data) <= cap
            next_task = following.get_json()["data"][0]
            assert len(page.data) + 1 + serialized_size(next_task) > cap  # it stopped at the task that would cross it


def test_a_page_holds_at_least_one_task_whatever_its_size(make_app, new_session):
    client = make_app(RESPONSE_MAX_BYTES=1).test_client()
    auth = {"Authorization": f"Bearer {new_session()}"}
    ids = [client.post("/api/tasks", json={"title": f"t{n}"}, headers=auth).get_json()["data"]["id"] for n in range(3)]
    pages = walk(lambda path, **params: client.get(path, query_string=params, headers=auth))
    assert [[task["id"] for task in page.get_json()["data"]] for page in pages] == [[ids[2]], [ids[1]], [ids[0]]]


def test_the_cursor_counts_against_the_cap_too(make_app, new_session):
    """Whatever the cap, a page of more than one task fits in it with its cursor (sorted by title, the cursor
    carries the title: it is as long as a task), and the pages together are the whole list."""
    app = make_app()
    auth = {"Authorization": f"Bearer {new_session()}"}
    client = app.test_client()
    for n in range(12):
        client.post("/api/tasks", json={"title": f"{n:02d} " + "x" * (20 + 17 * n)}, headers=auth)
    whole = client.get("/api/tasks?sort_by=title", headers=auth).get_json()["data"]
    for cap in range(300, 4000, 127):
        app.config["RESPONSE_MAX_BYTES"] = cap
        pages = walk(lambda path, **params: client.get(path, query_string=params, headers=auth), sort_by="title")
        for page in pages:
            assert len(page.data) <= cap or len(page.get_json()["data"]) == 1, (cap, len(page.data))
        assert [task for page in pages for task in page.get_json()["data"]] == whole


@pytest.mark.backends("postgres")  # Postgres's matcher, statement timeout and log
def test_search_folds_case_beyond_ascii_on_postgres(listed, create_task):
    wanted = create_task(title="Ñandú Straße", description="ÉCOLE")
    other = create_task(title="nandu strasse")
    expected = {"ñANDÚ": [wanted["id"]], "école": [wanted["id"]], "ß": [wanted["id"]], "STRASSE": [other["id"]]}
    assert {word: [task["id"] for task in listed(q=word).get_json()["data"]] for word in expected} == expected


def insert_long_tasks(app, token, count):
    """`count` tasks whose titles and descriptions are 'a's at their maximum lengths, by SQL, for speed."""
    with get_engine(app).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO task (user_id, title, description, completed, priority, tags, created_at, updated_at,"
                " reminder_sent) SELECT :user_id, repeat('a', 255), repeat('a', 10000), false, 'medium', '[]',"
                " now() - g * interval '1 second', now(), false FROM generate_series(1, :count) AS g"
            ),
            {"user_id": user_id_of(app, token), "count": count},
        )


# 99 'a's then a 'b': ILIKE '%...%' tried 99 characters at each of the 10,000 of a description.
ATTACK = "a" * 99 + "b"


@pytest.mark.backends("postgres")
def test_a_search_over_its_time_bound_is_a_503_and_nothing_else_is_bounded_by_it(make_app, token, caplog):
    app = make_app(SEARCH_STATEMENT_TIMEOUT_MS=1)
    insert_long_tasks(app, token, 200)
    client, auth = app.test_client(), {"Authorization": f"Bearer {token}"}
    response = client.get("/api/tasks/search", query_string={"keyword": ATTACK}, headers=auth)
    assert response.status_code == 503
    assert response.get_json() == {"detail": "The search took too long; try a more specific keyword"}
    assert response.headers["Retry-After"] == "5"
    assert "search cancelled: QueryCanceled" in caplog.text
    assert ATTACK not in caplog.text
    # The same connection serves on (the search's transaction was rolled back), and lists are not searches.
    listing_all = client.get("/api/tasks", query_string={"limit": 200}, headers=auth)
    assert listing_all.status_code == 200
    assert 1 < len(listing_all.get_json()["data"]) < 200  # 10 KB each: the byte cap ends the page
    assert "next_cursor" in listing_all.get_json()
    app.config["SEARCH_STATEMENT_TIMEOUT_MS"] = 5000
    response = client.get("/api/tasks/search", query_string={"keyword": ATTACK}, headers=auth)
    assert response.get_json() == {"data": []}


@pytest.mark.backends("postgres")
def test_the_search_word_is_not_in_the_text_of_the_select(app, listed, create_task):
    wanted = create_task(title="the secret word is zeppelin")
    sent = []
    event.listen(get_engine(app), "after_cursor_execute", lambda *args: sent.append(args[1].query.decode()))
    assert [task["id"] for task in listed(q="zeppelin").get_json()["data"]] == [wanted["id"]]
    assert [query for query in sent if "zeppelin" in query] == [
        "BEGIN; SELECT set_config('todo_api.search', '***=zeppelin', true)"
    ]
    select = [query for query in sent if "FROM task" in query]
    assert len(select) == 1
    assert select[0].startswith("SET LOCAL statement_timeout = 1000; SELECT task.id")
    assert "current_setting('todo_api.search')" in select[0]
    assert sent[-1] == "COMMIT"
