"""Each user's time zone: dates without an offset are read in it, and follow it when it changes."""

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from support import StatementLog, fetch
from todo_api.db.connections import get_engine
from todo_api.db.tables import task as task_table
from todo_api.tasks import listing
from todo_api.timezones import TIME_ZONES, local_to_utc, zone

UNKNOWN_ZONE = {"time_zone": ["Must be an IANA time zone name, such as Europe/Berlin or UTC."]}


def set_zone(client, auth, name):
    response = client.put("/api/settings", headers=auth, json={"time_zone": name})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"data": {"time_zone": name}}


def stored(app, task_id):
    """The instants the database keeps: (due_date, remind_at), naive UTC."""
    with get_engine(app).connect() as connection:
        row = connection.execute(
            select(task_table.c.due_date, task_table.c.remind_at).where(task_table.c.id == task_id)
        ).one()
    return tuple(row)


# -- Settings ----------------------------------------------------------------


def test_the_time_zone_is_utc_until_set(client, auth):
    response = client.get("/api/settings", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"data": {"time_zone": "UTC"}})


def test_setting_the_time_zone(client, auth, other_auth):
    set_zone(client, auth, "Europe/Berlin")
    assert client.get("/api/settings", headers=auth).get_json() == {"data": {"time_zone": "Europe/Berlin"}}
    set_zone(client, auth, "Asia/Kolkata")
    assert client.get("/api/settings", headers=auth).get_json() == {"data": {"time_zone": "Asia/Kolkata"}}
    assert client.get("/api/settings", headers=other_auth).get_json() == {"data": {"time_zone": "UTC"}}


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {"time_zone": "Mars/Olympus_Mons"},
            UNKNOWN_ZONE,
        ),
        (
            {"time_zone": "europe/berlin"},
            UNKNOWN_ZONE,
        ),
        ({"time_zone": "localtime"}, UNKNOWN_ZONE),
        ({"time_zone": "+02:00"}, UNKNOWN_ZONE),
        ({"time_zone": ""}, UNKNOWN_ZONE),
        ({"time_zone": None}, {"time_zone": ["Field may not be null."]}),
        ({"time_zone": 2}, {"time_zone": ["Not a valid string."]}),
        ({}, {"time_zone": ["Missing data for required field."]}),
    ],
)
def test_an_unknown_time_zone_is_422_and_changes_nothing(client, auth, create_task, body, errors):
    set_zone(client, auth, "Europe/Berlin")
    created = create_task(due_date="2026-01-30T10:00")
    response = client.put("/api/settings", headers=auth, json=body)
    assert response.status_code == 422
    assert response.get_json() == {"detail": "Validation failed", "errors": errors}
    assert client.get("/api/settings", headers=auth).get_json() == {"data": {"time_zone": "Europe/Berlin"}}
    assert client.get(f"/api/tasks/{created['id']}", headers=auth).get_json() == {"data": created}


def test_settings_need_a_session_and_json(client, auth):
    assert client.get("/api/settings").status_code == 401
    assert client.put("/api/settings", json={"time_zone": "UTC"}).status_code == 401
    response = client.put("/api/settings", headers=auth, data="time_zone=UTC")
    assert response.status_code == 415
    assert client.get("/api/settings", headers=auth).get_json() == {"data": {"time_zone": "UTC"}}


def test_every_accepted_zone_is_known_to_python_and_to_the_database(app, backend):
    assert "UTC" in TIME_ZONES and "Europe/Berlin" in TIME_ZONES and "localtime" not in TIME_ZONES
    if backend == "postgres":
        with get_engine(app).connect() as connection:
            known = set(connection.exec_driver_sql("SELECT name FROM pg_timezone_names").scalars())
        assert TIME_ZONES <= known


# -- Reading dates in the user's zone ------------------------------------------------


def test_dates_without_an_offset_are_read_in_the_users_zone(app, client, auth, create_task):
    set_zone(client, auth, "Europe/Berlin")
    all_day = create_task(due_date="2026-01-30", remind_at="2026-01-29T18:00")
    timed = create_task(due_date="2026-07-01T09:00:30.5")
    instant = create_task(due_date="2026-01-30T10:00:00+01:00", remind_at="2026-01-30T08:00:00Z")
    assert (all_day["due_date"], all_day["due_all_day"], all_day["remind_at"]) == (
        "2026-01-30T00:00:00",
        True,
        "2026-01-29T18:00:00",
    )
    assert (timed["due_date"], timed["due_all_day"]) == ("2026-07-01T09:00:30.500000", False)
    assert (instant["due_date"], instant["due_all_day"], instant["remind_at"]) == (
        "2026-01-30T09:00:00+00:00",
        False,
        "2026-01-30T08:00:00+00:00",
    )
    assert stored(app, all_day["id"]) == (datetime(2026, 1, 29, 23), datetime(2026, 1, 29, 17))
    assert stored(app, timed["id"]) == (datetime(2026, 7, 1, 7, 0, 30, 500000), None)
    assert stored(app, instant["id"]) == (datetime(2026, 1, 30, 9), datetime(2026, 1, 30, 8))


@pytest.mark.parametrize(
    ("zone_name", "local", "instant"),
    [
        # Clocks go forward: a time in the skipped hour moves forward by the gap.
        ("Europe/Berlin", "2026-03-29T02:30", datetime(2026, 3, 29, 1, 30)),  # 03:30 CEST
        ("America/New_York", "2026-03-08T02:30", datetime(2026, 3, 8, 7, 30)),  # 03:30 EDT
        ("Australia/Sydney", "2026-10-04T02:30", datetime(2026, 10, 3, 16, 30)),  # 03:30 AEDT
        # Clocks go back: a time in the repeated hour is its first occurrence.
        ("Europe/Berlin", "2026-10-25T02:30", datetime(2026, 10, 25, 0, 30)),  # 02:30 CEST
        ("America/New_York", "2026-11-01T01:30", datetime(2026, 11, 1, 5, 30)),  # 01:30 EDT
        ("Australia/Sydney", "2026-04-05T02:30", datetime(2026, 4, 4, 15, 30)),  # 02:30 AEDT
        ("Europe/Berlin", "2026-10-25T03:30", datetime(2026, 10, 25, 2, 30)),  # after the change
        ("America/Havana", "2026-11-01", datetime(2026, 11, 1, 4)),  # midnight happens twice there
    ],
)
def test_skipped_and_repeated_times(app, client, auth, create_task, zone_name, local, instant):
    """The same rule in SQL (a create, a zone change) and in Python (an update, recurrence), on both databases."""
    assert local_to_utc(datetime.fromisoformat(local), zone(zone_name)) == instant
    set_zone(client, auth, zone_name)
    created = create_task(due_date=local, remind_at=local)
    assert stored(app, created["id"]) == (instant, instant)
    other = create_task()
    client.put(f"/api/tasks/{other['id']}", headers=auth, json={"due_date": local, "remind_at": local})
    assert stored(app, other["id"]) == (instant, instant)
    set_zone(client, auth, "UTC")
    set_zone(client, auth, zone_name)
    assert stored(app, created["id"]) == (instant, instant)


def test_empty_strings_are_null(client, auth, create_task):
    task = create_task(due_date="", remind_at="", recurrence_pattern="", is_recurring=True)
    assert (task["due_date"], task["remind_at"], task["recurrence_pattern"], task["is_recurring"]) == (
        None,
        None,
        None,
        False,
    )
    dated = create_task(due_date="2026-01-30", remind_at="2026-01-30T08:00", recurrence_pattern="daily")
    cleared = client.put(
        f"/api/tasks/{dated['id']}", headers=auth, json={"due_date": "", "remind_at": "", "recurrence_pattern": ""}
    )
    assert cleared.status_code == 200
    data = cleared.get_json()["data"]
    assert (data["due_date"], data["due_all_day"], data["remind_at"], data["is_recurring"]) == (
        None,
        False,
        None,
        False,
    )
    refused = client.put(f"/api/tasks/{dated['id']}", headers=auth, json={"title": ""})
    assert refused.status_code == 422


def test_is_recurring_in_a_body_is_ignored(client, auth, create_task):
    task = create_task(is_recurring=True, due_date="2026-01-30")
    assert task["is_recurring"] is False
    body = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"is_recurring": True}).get_json()
    assert body["data"]["is_recurring"] is False


def test_an_update_switches_between_the_three_forms(app, client, auth, create_task):
    set_zone(client, auth, "Asia/Kolkata")
    task = create_task(due_date="2026-01-30")

    def put(**fields):
        response = client.put(f"/api/tasks/{task['id']}", headers=auth, json=fields)
        assert response.status_code == 200, response.get_json()
        data = response.get_json()["data"]
        return data["due_date"], data["due_all_day"], data["remind_at"]

    assert put(due_date="2026-01-30T10:00:00Z") == ("2026-01-30T10:00:00+00:00", False, None)
    assert stored(app, task["id"]) == (datetime(2026, 1, 30, 10), None)
    assert put(due_date="2026-01-31T09:15", remind_at="2026-01-31") == (
        "2026-01-31T09:15:00",
        False,
        "2026-01-31T00:00:00",
    )
    assert stored(app, task["id"]) == (datetime(2026, 1, 31, 3, 45), datetime(2026, 1, 30, 18, 30))
    assert put(due_date="2026-02-01") == ("2026-02-01T00:00:00", True, "2026-01-31T00:00:00")
    assert put(remind_at="2026-01-31T12:00:00+05:30") == ("2026-02-01T00:00:00", True, "2026-01-31T06:30:00+00:00")
    assert put(due_date=None) == (None, False, "2026-01-31T06:30:00+00:00")


def test_moving_a_wall_clock_reminder_clears_reminder_sent(client, auth, create_task):
    set_zone(client, auth, "Europe/Berlin")
    task = create_task(remind_at="2026-01-30T09:00")
    client.patch(f"/api/tasks/{task['id']}/mark-reminder-sent", headers=auth)
    same = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"remind_at": "2026-01-30T08:00:00Z"})
    assert (same.get_json()["data"]["remind_at"], same.get_json()["data"]["reminder_sent"]) == (
        "2026-01-30T08:00:00+00:00",
        True,
    )
    moved = client.put(f"/api/tasks/{task['id']}", headers=auth, json={"remind_at": "2026-01-30T09:01"})
    assert (moved.get_json()["data"]["remind_at"], moved.get_json()["data"]["reminder_sent"]) == (
        "2026-01-30T09:01:00",
        False,
    )


# -- Changing the zone ------------------------------------------------------------


def test_a_zone_change_keeps_every_tasks_meaning(app, client, auth, other_auth, create_task):
    set_zone(client, auth, "Europe/Berlin")
    all_day = create_task(title="all day", due_date="2026-07-01", remind_at="2026-06-30T20:00")
    timed = create_task(title="wall clock", due_date="2026-07-01T09:00")
    instant = create_task(title="instant", due_date="2026-07-01T10:00:00Z", remind_at="2026-07-01T09:00:00Z")
    mixed = create_task(title="mixed", due_date="2026-07-01T11:00:00Z", remind_at="2026-07-01T08:00")
    foreign = create_task(headers=other_auth, title="foreign", due_date="2026-07-01T09:00")
    tags = {t["id"]: fetch(client, auth, t["id"])[1] for t in (all_day, timed, instant, mixed)}
    by_due = [
        t["title"] for t in client.get("/api/tasks?sort_by=due_date&sort_order=asc", headers=auth).get_json()["data"]
    ]
    assert by_due == ["all day", "wall clock", "instant", "mixed"]

    set_zone(client, auth, "America/New_York")
    for before in (all_day, timed, instant, mixed):
        body, tag = fetch(client, auth, before["id"])
        assert (body, tag) == (before, tags[before["id"]])  # shown alike, same version
    assert stored(app, all_day["id"]) == (datetime(2026, 7, 1, 4), datetime(2026, 7, 1, 0))
    assert stored(app, timed["id"]) == (datetime(2026, 7, 1, 13), None)
    assert stored(app, instant["id"]) == (datetime(2026, 7, 1, 10), datetime(2026, 7, 1, 9))
    assert stored(app, mixed["id"]) == (datetime(2026, 7, 1, 11), datetime(2026, 7, 1, 12))
    assert stored(app, foreign["id"]) == (datetime(2026, 7, 1, 9), None)  # another user's zone: UTC
    by_due = [
        t["title"] for t in client.get("/api/tasks?sort_by=due_date&sort_order=asc", headers=auth).get_json()["data"]
    ]
    assert by_due == ["all day", "instant", "mixed", "wall clock"]


def test_a_zone_change_is_one_transaction(app, client, auth, create_task):
    create_task(due_date="2026-07-01")
    log = StatementLog(app)
    try:
        set_zone(client, auth, "Europe/Berlin")
    finally:
        log.close()
    assert log.statements == ["BEGIN", "INSERT", "UPDATE", "COMMIT"]  # the INSERT checks the (known) session


def test_a_wall_clock_time_late_in_the_last_year_stays_readable_in_any_zone(app, client, auth, create_task):
    first = create_task(due_date="9998-12-31T20:00", recurrence_pattern="yearly")
    last = client.patch(f"/api/tasks/{first['id']}/complete", headers=auth).get_json()["next_task"]
    assert last["due_date"] == "9999-12-31T20:00:00"
    set_zone(client, auth, "Etc/GMT+12")  # 9999-12-31T20:00 there is past the calendar's end in UTC
    assert stored(app, last["id"]) == (datetime.max, None)
    assert client.get(f"/api/tasks/{last['id']}", headers=auth).get_json()["data"] == last
    response = client.patch(f"/api/tasks/{last['id']}/complete", headers=auth)
    assert (response.status_code, "next_task" in response.get_json()) == (200, False)


# -- Filters in the user's zone --------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """Set the list's clock to a naive UTC moment."""

    def set_now(moment):
        monkeypatch.setattr(listing, "utcnow", lambda: moment)

    return set_now


@pytest.mark.parametrize(
    ("zone_name", "ten", "midnight"),
    [
        # 10:00 on 30 January, and the end of that day, in each zone, in UTC.
        ("America/New_York", datetime(2026, 1, 30, 15), datetime(2026, 1, 31, 5)),
        ("UTC", datetime(2026, 1, 30, 10), datetime(2026, 1, 31)),
        ("Asia/Kolkata", datetime(2026, 1, 30, 4, 30), datetime(2026, 1, 30, 18, 30)),
        ("Pacific/Kiritimati", datetime(2026, 1, 29, 20), datetime(2026, 1, 30, 10)),
    ],
)
def test_an_all_day_task_is_overdue_once_its_day_has_ended(client, auth, create_task, clock, zone_name, ten, midnight):
    set_zone(client, auth, zone_name)
    create_task(title="all day", due_date="2026-01-30")
    create_task(title="at ten", due_date="2026-01-30T10:00")
    create_task(title="undated")
    microsecond = timedelta(microseconds=1)

    def overdue(now):
        clock(now)
        late = client.get("/api/tasks?overdue=true", headers=auth).get_json()["data"]
        rest = client.get("/api/tasks?overdue=false", headers=auth).get_json()["data"]
        return [t["title"] for t in late], [t["title"] for t in rest]

    assert overdue(ten) == ([], ["undated", "at ten", "all day"])
    assert overdue(ten + microsecond) == (["at ten"], ["undated", "all day"])
    assert overdue(midnight - microsecond) == (["at ten"], ["undated", "all day"])
    assert overdue(midnight) == (["at ten", "all day"], ["undated"])


def test_a_completed_all_day_task_is_never_overdue(client, auth, create_task, clock):
    task = create_task(due_date="2026-01-30")
    client.patch(f"/api/tasks/{task['id']}/complete", headers=auth)
    clock(datetime(2026, 2, 2))
    assert client.get("/api/tasks?overdue=true", headers=auth).get_json() == {"data": []}


def test_reminders_come_due_at_their_wall_clock_time(client, auth, create_task, clock):
    set_zone(client, auth, "Europe/Berlin")
    create_task(title="reminded", remind_at="2026-01-30T09:00")
    clock(datetime(2026, 1, 30, 7, 59, 59, 999999))
    assert client.get("/api/tasks?reminder_due=true", headers=auth).get_json() == {"data": []}
    clock(datetime(2026, 1, 30, 8))
    assert [t["title"] for t in client.get("/api/tasks?reminder_due=true", headers=auth).get_json()["data"]] == [
        "reminded"
    ]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # A date stands for the moment its day begins in the user's zone (New York, UTC-5).
        ({"due_before": "2026-01-31"}, ["late on the 30th", "the 30th"]),
        ({"due_before": "2026-01-30"}, []),
        ({"due_after": "2026-01-30"}, ["the 31st", "late on the 30th"]),
        ({"due_after": "2026-01-30T23:00"}, ["the 31st"]),
        ({"due_before": "2026-01-30T23:00:00.000001"}, ["late on the 30th", "the 30th"]),
        ({"due_before": "2026-01-31T04:00:00Z"}, ["the 30th"]),
        ({"due_after": "2026-01-31T04:00:00Z"}, ["the 31st"]),
        ({"due_after": "2026-01-31T03:59:59.999999Z"}, ["the 31st", "late on the 30th"]),
        ({"due_after": "2026-01-30", "due_before": "2026-01-31"}, ["late on the 30th"]),
    ],
)
def test_due_before_and_after_take_the_three_forms(client, auth, create_task, params, expected):
    set_zone(client, auth, "America/New_York")
    create_task(title="the 30th", due_date="2026-01-30")
    create_task(title="late on the 30th", due_date="2026-01-30T23:00")  # 04:00 UTC on the 31st
    create_task(title="the 31st", due_date="2026-01-31")
    response = client.get("/api/tasks", headers=auth, query_string=params)
    assert response.status_code == 200
    assert [t["title"] for t in response.get_json()["data"]] == expected


def test_lists_read_the_zone_only_for_wall_clock_bounds(app, client, auth, create_task):
    """overdue reads it in the list's statement; a wall-clock due_before/due_after first, so the
    planner sees the bound it plans the index range with."""
    create_task(due_date="2026-01-30")
    log = StatementLog(app)
    try:
        for query, statements in [
            ("overdue=true", ["SELECT"]),
            # An empty page: the session is then looked up, to tell 401 from an empty list.
            ("due_before=2026-01-31T00:00:00Z&overdue=false", ["SELECT", "SELECT"]),
            ("due_before=2026-01-31", ["SELECT", "SELECT"]),
            ("overdue=false&due_after=2026-01-30T10:00&due_before=2026-02-01", ["SELECT", "SELECT", "SELECT"]),
        ]:
            log.statements.clear()
            assert client.get(f"/api/tasks?{query}", headers=auth).status_code == 200
            assert log.statements == statements, query
    finally:
        log.close()


def test_writes_that_need_the_zone_read_it_in_their_own_statement_or_transaction(app, client, auth, create_task):
    plain = create_task()
    recurring = create_task(due_date="2026-01-30", recurrence_pattern="daily")
    log = StatementLog(app)
    try:
        assert client.post("/api/tasks", headers=auth, json={"title": "x", "due_date": "2026-01-30"}).status_code == 200
        assert log.statements == ["INSERT"]
        log.statements.clear()
        assert client.put(f"/api/tasks/{plain['id']}", headers=auth, json={"title": "y"}).status_code == 200
        assert log.statements == ["UPDATE"]
        log.statements.clear()
        assert client.put(f"/api/tasks/{plain['id']}", headers=auth, json={"due_date": "2026-01-31"}).status_code == 200
        assert log.statements == ["BEGIN", "SELECT", "SELECT", "UPDATE", "COMMIT"]
        log.statements.clear()
        assert client.put(f"/api/tasks/{plain['id']}", headers=auth, json={"due_date": None}).status_code == 200
        assert log.statements == ["UPDATE"]  # no zone needed, and the task does not recur: one statement
        log.statements.clear()
        assert client.patch(f"/api/tasks/{recurring['id']}/complete", headers=auth).status_code == 200
        assert log.statements == ["UPDATE", "BEGIN", "SELECT", "UPDATE", "SELECT", "INSERT", "COMMIT"]
    finally:
        log.close()


# -- Recurrence on the wall clock ------------------------------------------------

# (zone, pattern, first due date on the wall clock, the next three, their UTC instants)
SERIES = [
    (
        "Europe/Berlin",
        "weekly",
        "2026-03-19T09:00",
        ["2026-03-26T09:00:00", "2026-04-02T09:00:00", "2026-04-09T09:00:00"],
        [datetime(2026, 3, 26, 8), datetime(2026, 4, 2, 7), datetime(2026, 4, 9, 7)],
    ),
    (
        "Europe/Berlin",
        "weekly",
        "2026-10-15T09:00",
        ["2026-10-22T09:00:00", "2026-10-29T09:00:00", "2026-11-05T09:00:00"],
        [datetime(2026, 10, 22, 7), datetime(2026, 10, 29, 8), datetime(2026, 11, 5, 8)],
    ),
    (
        "Europe/Berlin",
        "daily",
        "2026-03-27T09:00",
        ["2026-03-28T09:00:00", "2026-03-29T09:00:00", "2026-03-30T09:00:00"],
        [datetime(2026, 3, 28, 8), datetime(2026, 3, 29, 7), datetime(2026, 3, 30, 7)],
    ),
    (
        "America/New_York",
        "daily",
        "2026-10-30T09:00",
        ["2026-10-31T09:00:00", "2026-11-01T09:00:00", "2026-11-02T09:00:00"],
        [datetime(2026, 10, 31, 13), datetime(2026, 11, 1, 14), datetime(2026, 11, 2, 14)],
    ),
    (
        "America/New_York",
        "monthly",
        "2026-01-31T09:00",
        ["2026-02-28T09:00:00", "2026-03-28T09:00:00", "2026-04-28T09:00:00"],
        [datetime(2026, 2, 28, 14), datetime(2026, 3, 28, 13), datetime(2026, 4, 28, 13)],
    ),
    (
        "Australia/Sydney",
        "weekly",
        "2026-03-22T09:00",
        ["2026-03-29T09:00:00", "2026-04-05T09:00:00", "2026-04-12T09:00:00"],
        [datetime(2026, 3, 28, 22), datetime(2026, 4, 4, 23), datetime(2026, 4, 11, 23)],
    ),
    (
        "Australia/Sydney",
        "monthly",
        "2026-08-04T09:00",
        ["2026-09-04T09:00:00", "2026-10-04T09:00:00", "2026-11-04T09:00:00"],
        [datetime(2026, 9, 3, 23), datetime(2026, 10, 3, 22), datetime(2026, 11, 3, 22)],
    ),
]


def complete_series(client, auth, first, times):
    """Complete the task and each next occurrence; the next occurrences, in order."""
    occurrences, current = [], first
    for _ in range(times):
        response = client.patch(f"/api/tasks/{current['id']}/complete", headers=auth)
        assert response.status_code == 200
        current = response.get_json()["next_task"]
        occurrences.append(current)
    return occurrences


@pytest.mark.parametrize(("zone_name", "pattern", "first", "locals_", "instants"), SERIES)
def test_a_series_keeps_its_wall_clock_time_across_daylight_saving(
    app, client, auth, create_task, zone_name, pattern, first, locals_, instants
):
    set_zone(client, auth, zone_name)
    start = create_task(due_date=first, remind_at=first.replace("09:00", "08:30"), recurrence_pattern=pattern)
    following = complete_series(client, auth, start, 3)
    assert [t["due_date"] for t in following] == locals_
    assert [t["remind_at"] for t in following] == [local.replace("09:00", "08:30") for local in locals_]
    assert [t["due_all_day"] for t in following] == [False] * 3
    assert [stored(app, t["id"])[0] for t in following] == instants


@pytest.mark.parametrize(("zone_name", "pattern", "first", "locals_", "instants"), SERIES)
def test_a_series_given_with_an_offset_keeps_the_wall_clock_time_too(
    app, client, auth, create_task, zone_name, pattern, first, locals_, instants
):
    set_zone(client, auth, zone_name)
    first_instant = local_to_utc(datetime.fromisoformat(first), zone(zone_name))
    start = create_task(due_date=f"{first_instant.isoformat()}Z", recurrence_pattern=pattern)
    following = complete_series(client, auth, start, 3)
    assert [t["due_date"] for t in following] == [f"{instant.isoformat()}+00:00" for instant in instants]
    assert [t["due_all_day"] for t in following] == [False] * 3


@pytest.mark.parametrize(("zone_name", "pattern", "first", "locals_", "instants"), SERIES)
def test_an_all_day_series_stays_all_day(app, client, auth, create_task, zone_name, pattern, first, locals_, instants):
    set_zone(client, auth, zone_name)
    start = create_task(due_date=first[:10], recurrence_pattern=pattern)
    following = complete_series(client, auth, start, 3)
    assert [t["due_date"] for t in following] == [local[:10] + "T00:00:00" for local in locals_]
    assert [t["due_all_day"] for t in following] == [True] * 3
    midnights = [local_to_utc(datetime.fromisoformat(local[:10]), zone(zone_name)) for local in locals_]
    assert [stored(app, t["id"])[0] for t in following] == midnights


def test_a_skipped_time_is_kept_on_the_wall_clock_for_the_next_occurrence(app, client, auth, create_task):
    set_zone(client, auth, "Europe/Berlin")
    start = create_task(due_date="2026-03-28T02:30", recurrence_pattern="daily")
    following = complete_series(client, auth, start, 2)
    assert [t["due_date"] for t in following] == ["2026-03-29T02:30:00", "2026-03-30T02:30:00"]
    assert [stored(app, t["id"])[0] for t in following] == [datetime(2026, 3, 29, 1, 30), datetime(2026, 3, 30, 0, 30)]


def test_a_series_steps_on_the_wall_clock_of_the_zone_at_completion(app, client, auth, create_task):
    """Stored instants from before a zone was set are read in the zone the user has when completing."""
    start = create_task(due_date="2026-03-26T08:00:00Z", recurrence_pattern="weekly")
    set_zone(client, auth, "Europe/Berlin")  # 09:00 CET
    (following,) = complete_series(client, auth, start, 1)
    assert following["due_date"] == "2026-04-02T07:00:00+00:00"  # 09:00 CEST


def test_an_old_row_without_wall_clock_columns_recurs_as_before(app, client, auth, create_task):
    created = create_task(due_date="2026-01-31T09:00:00Z", recurrence_pattern="monthly")
    with get_engine(app).begin() as connection:
        connection.execute(update(task_table).where(task_table.c.id == created["id"]).values(due_local=None))
    (following,) = complete_series(client, auth, created, 1)
    assert (following["due_date"], following["due_all_day"]) == ("2026-02-28T09:00:00+00:00", False)


def test_a_retried_create_with_a_wall_clock_date_is_stored_once(client, auth):
    set_zone(client, auth, "Europe/Berlin")
    headers = {**auth, "Idempotency-Key": "wall-clock-create"}
    first = client.post("/api/tasks", headers=headers, json={"title": "x", "due_date": "2026-01-30"})
    retry = client.post("/api/tasks", headers=headers, json={"due_date": "2026-01-30", "title": "x"})
    assert (first.status_code, retry.status_code, retry.headers["Idempotent-Replayed"]) == (200, 200, "true")
    assert retry.data == first.data
    same_instant = client.post("/api/tasks", headers=headers, json={"title": "x", "due_date": "2026-01-29T23:00:00Z"})
    assert same_instant.status_code == 422  # another request: an instant, not a calendar date
    assert len(client.get("/api/tasks", headers=auth).get_json()["data"]) == 1
