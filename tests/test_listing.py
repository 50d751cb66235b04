"""Finding tasks: every filter, sort and page of `GET /api/tasks`, on both databases."""

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from todo_api import listing


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
        ({"q": "x" * 201}, "q"),
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


HOSTILE = ["'", "%", "_", "\\", "'; DROP TABLE task; --", '" OR 1=1 --', "%_\\%", "' OR ''='", "ñ%"]


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
