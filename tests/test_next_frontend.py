"""The team's next frontend, unchanged: its exact requests, and what it shows.

Bodies, paths and headers are written as `lib/api.ts`, `app/dashboard/page.tsx`,
`TaskModal.tsx` and `TaskForm.tsx` write them (JSON.stringify, Content-Type on
every request); what a browser shows is computed with the model of JavaScript
`Date` in `support/jsdate.py`, in browsers at UTC-12, UTC, UTC+5:30 and UTC+14. The
user has set no time zone here, as the frontend never calls /api/settings.
"""

import json
import os
import shutil
import subprocess
from datetime import date
from urllib.parse import urlencode

import pytest

from support.jsdate import new_date, prefilled_date, shown_date, to_iso_string, to_locale_date_string

BROWSER_ZONES = ["Etc/GMT+12", "UTC", "Asia/Kolkata", "Pacific/Kiritimati"]  # UTC-12, UTC, UTC+5:30, UTC+14
PICKED = date(2026, 1, 30)


@pytest.fixture
def frontend(client, token):
    """`request()` of lib/api.ts: JSON.stringify'd bodies, Content-Type on every request; returns
    (status, the body's `data`)."""

    def request(method, path, body=None):
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        response = client.open(path, method=method, headers=headers, data=data)
        return response.status_code, response.get_json().get("data")

    return request


def modal_task_data(title="Pay rent", description="", priority="medium", due_date="", recurrence_pattern=""):
    """page.tsx handleSubmit's `taskData`, from the modal's state."""
    return {
        "title": title,
        "description": description,
        "priority": priority,
        "due_date": due_date or None,
        "is_recurring": bool(recurrence_pattern),
        "recurrence_pattern": recurrence_pattern or None,
    }


def quick_add_task(title="Quick", due_date="", is_recurring=False, recurrence_pattern=""):
    """TaskForm.tsx handleSubmit's `newTask`; JSON.stringify drops the `undefined` fields."""
    task = {"title": title, "description": "", "priority": "medium", "category": "", "tags": []}
    if due_date:
        task["due_date"] = due_date
    task["is_recurring"] = is_recurring
    if is_recurring:
        task["recurrence_pattern"] = recurrence_pattern
    return task


def test_the_date_model_follows_the_specification():
    from datetime import UTC, datetime

    assert new_date("2026-01-30", "Asia/Kolkata") == datetime(2026, 1, 30, tzinfo=UTC)
    assert new_date("2026-01-30T10:00", "Asia/Kolkata") == datetime(2026, 1, 30, 4, 30, tzinfo=UTC)
    assert new_date("2026-01-30T10:00:00.123456+02:00", "UTC") == datetime(2026, 1, 30, 8, 0, 0, 123000, tzinfo=UTC)
    assert to_iso_string(datetime(2026, 1, 29, 18, 30, tzinfo=UTC)) == "2026-01-29T18:30:00.000Z"
    assert to_locale_date_string(datetime(2026, 1, 29, 18, 30, tzinfo=UTC), "Asia/Kolkata") == PICKED
    with pytest.raises(ValueError):
        new_date("30/01/2026", "UTC")


def test_a_date_picked_in_the_modal_is_created_all_day(frontend):
    status, task = frontend("POST", "/api/tasks", {**modal_task_data(due_date="2026-01-30"), "tags": []})
    assert status == 200
    assert (task["due_date"], task["due_all_day"], task["is_recurring"], task["recurrence_pattern"]) == (
        "2026-01-30T00:00:00",
        True,
        False,
        None,
    )
    assert (task["title"], task["description"], task["tags"]) == ("Pay rent", "", [])


@pytest.mark.parametrize("browser_zone", BROWSER_ZONES)
def test_the_card_shows_the_picked_date_in_every_browser_zone(frontend, browser_zone):
    _, all_day = frontend("POST", "/api/tasks", {**modal_task_data(due_date="2026-01-30"), "tags": []})
    _, timed = frontend("POST", "/api/tasks", quick_add_task(due_date="2026-01-30T10:00"))
    assert timed["due_date"] == "2026-01-30T10:00:00"
    assert timed["due_all_day"] is False
    assert shown_date(all_day["due_date"], browser_zone) == PICKED
    assert shown_date(timed["due_date"], browser_zone) == PICKED
    _, listed = frontend("GET", "/api/tasks")
    assert [shown_date(task["due_date"], browser_zone) for task in listed] == [PICKED, PICKED]


@pytest.mark.parametrize("browser_zone", BROWSER_ZONES)
def test_an_instant_at_utc_midnight_would_show_the_day_before_west_of_greenwich(browser_zone):
    """What the card showed when the API answered every due date in UTC: the reason for wall-clock output."""
    expected = date(2026, 1, 29) if browser_zone == "Etc/GMT+12" else PICKED
    assert shown_date("2026-01-30T00:00:00+00:00", browser_zone) == expected


# The edit modal's pre-fill takes the UTC date of the shown value: a frontend quirk. With the
# value on the wall clock it is right wherever the browser is at or west of UTC, and a day early
# east of it, where local midnight is still the day before in UTC. No one string serves both the
# card and the pre-fill at UTC-12 and at UTC+14: the card needs the instant inside the day locally,
# the pre-fill needs it inside the day in UTC, and the two days overlap by 24 h minus the offset.
PREFILL = {
    # browser zone: (pre-fill of the all-day task, pre-fill of the 10:00 task)
    "Etc/GMT+12": ("2026-01-30", "2026-01-30"),
    "UTC": ("2026-01-30", "2026-01-30"),
    "Asia/Kolkata": ("2026-01-29", "2026-01-30"),
    "Pacific/Kiritimati": ("2026-01-29", "2026-01-29"),
}


@pytest.mark.parametrize("browser_zone", BROWSER_ZONES)
def test_the_edit_modal_prefills_what_the_frontend_computes(frontend, browser_zone):
    _, all_day = frontend("POST", "/api/tasks", {**modal_task_data(due_date="2026-01-30"), "tags": []})
    _, timed = frontend("POST", "/api/tasks", quick_add_task(due_date="2026-01-30T10:00"))
    prefill = (prefilled_date(all_day["due_date"], browser_zone), prefilled_date(timed["due_date"], browser_zone))
    assert prefill == PREFILL[browser_zone]


@pytest.mark.parametrize("browser_zone", BROWSER_ZONES)
def test_saving_the_edit_modal_unchanged_keeps_the_date_where_the_prefill_is_right(frontend, browser_zone):
    _, created = frontend("POST", "/api/tasks", {**modal_task_data(due_date="2026-01-30"), "tags": []})
    prefill = prefilled_date(created["due_date"], browser_zone)
    status, saved = frontend("PUT", f"/api/tasks/{created['id']}", modal_task_data(due_date=prefill))
    assert status == 200
    assert (saved["due_date"], saved["due_all_day"]) == (f"{prefill}T00:00:00", True)
    expected = "2026-01-30T00:00:00" if browser_zone in ("Etc/GMT+12", "UTC") else "2026-01-29T00:00:00"
    assert saved["due_date"] == expected


def test_editing_with_empty_fields_sends_nulls(frontend):
    _, created = frontend("POST", "/api/tasks", {**modal_task_data(due_date="2026-01-30"), "tags": []})
    status, saved = frontend("PUT", f"/api/tasks/{created['id']}", modal_task_data(title="Renamed"))
    assert status == 200
    assert (saved["title"], saved["due_date"], saved["due_all_day"], saved["recurrence_pattern"]) == (
        "Renamed",
        None,
        False,
        None,
    )


def test_a_recurring_task_from_the_modal(frontend):
    body = {**modal_task_data(due_date="2026-01-31", recurrence_pattern="monthly"), "tags": []}
    status, task = frontend("POST", "/api/tasks", body)
    assert status == 200
    assert (task["is_recurring"], task["recurrence_pattern"], task["due_date"]) == (
        True,
        "monthly",
        "2026-01-31T00:00:00",
    )
    status, done = frontend("PATCH", f"/api/tasks/{task['id']}/complete")
    assert status == 200
    _, listed = frontend("GET", "/api/tasks")
    following = listed[0]
    assert (following["due_date"], following["due_all_day"], following["completed"]) == (
        "2026-02-28T00:00:00",
        True,
        False,
    )
    assert done["completed"] is True


def test_quick_add_with_recurring_ticked_and_no_pattern_is_a_plain_task(frontend):
    status, task = frontend("POST", "/api/tasks", quick_add_task(due_date="2026-01-30", is_recurring=True))
    assert status == 200
    assert (task["is_recurring"], task["recurrence_pattern"], task["due_date"], task["category"]) == (
        False,
        None,
        "2026-01-30T00:00:00",
        "",
    )


def test_quick_add_with_a_pattern_and_without_a_date_is_refused(frontend):
    status, _ = frontend("POST", "/api/tasks", quick_add_task(is_recurring=True, recurrence_pattern="daily"))
    assert status == 422
    assert frontend("GET", "/api/tasks") == (200, [])


def filter_sort(frontend, **filters):
    """lib/api.ts filterSortTasks: only the keys with a value, in URLSearchParams."""
    return frontend("GET", f"/api/tasks/filter-sort?{urlencode(filters)}")


def test_filter_sort_without_sort_order_is_ascending(frontend):
    for title, due in [("late", "2026-03-01"), ("none", ""), ("early", "2026-01-30T10:00"), ("middle", "2026-02-01")]:
        assert frontend("POST", "/api/tasks", {**modal_task_data(title=title, due_date=due), "tags": []})[0] == 200
    _, by_due = filter_sort(frontend, sort_by="due_date")
    assert [task["title"] for task in by_due] == ["early", "middle", "late", "none"]
    _, pending = filter_sort(frontend, status="pending")
    assert [task["title"] for task in pending] == ["late", "none", "early", "middle"]  # oldest first
    _, listed = frontend("GET", "/api/tasks?sort_by=due_date")  # the list keeps newest first
    assert [task["title"] for task in listed] == ["late", "middle", "early", "none"]
    _, descending = filter_sort(frontend, sort_by="due_date", sort_order="desc")
    assert descending == listed


# -- The model of `Date` against Node's own ---------------------------------------------------------------------

NODE_DATES = """
const lines = JSON.parse(process.argv[1]).map((text) => {
  const instant = new Date(text);
  const shown = [instant.getFullYear(), instant.getMonth() + 1, instant.getDate()];
  return [shown.map((n) => String(n).padStart(2, "0")).join("-"), instant.toISOString().split("T")[0]];
});
console.log(JSON.stringify(lines));
"""


def node_dates(texts, browser_zone):
    """[(shown date, prefilled date)] of each text, by Node's real `Date` in a process whose zone is `browser_zone`."""
    done = subprocess.run(
        [shutil.which("node"), "-e", NODE_DATES, json.dumps(texts)],
        env={**os.environ, "TZ": browser_zone},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [tuple(pair) for pair in json.loads(done.stdout)]


@pytest.mark.node
@pytest.mark.backends("sqlite")
@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node")
@pytest.mark.parametrize("browser_zone", BROWSER_ZONES)
def test_the_model_of_date_reads_what_the_service_returns_as_node_does(client, auth, browser_zone):
    """What the tests above compute with `support.jsdate`, checked against a real JavaScript engine, on the
    due dates the service itself returns for each form the frontend and the API send."""
    texts = []
    for due_date in ["2026-01-30", "2026-01-30T10:00", "2026-12-31T23:30", "2026-01-30T10:00:00+05:30"]:
        response = client.post("/api/tasks", json={"title": "t", "due_date": due_date}, headers=auth)
        assert response.status_code == 200
        texts.append(response.get_json()["data"]["due_date"])
    modelled = [(shown_date(text, browser_zone).isoformat(), prefilled_date(text, browser_zone)) for text in texts]
    assert node_dates(texts, browser_zone) == modelled
