"""Every list query is an index range scan of the caller's rows, and the session lookup an index
scan by token digest (Postgres's own plans).

The plans are read from a database of its own, filled once with 40,000 tasks
of 40 users (10,000 of them the caller's, more than one page without a limit)
and 20,000 sessions, and analysed, so the planner sees realistic tables. Searches are planned for
a user with 40,000 tasks, added for them, with the word in the transaction's
setting as the service sends it.
"""

import dataclasses
import re
from datetime import datetime
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql

from support import ADMIN_URL, base_config
from todo_api import create_app
from todo_api.auth.sessions import get_sessions
from todo_api.db.connections import get_engine, transaction
from todo_api.db.engine import normalize_url
from todo_api.db.migrate import create_schema
from todo_api.db.token_digest import token_digest
from todo_api.tasks import listing
from todo_api.tasks.schemas import WallClock, list_query_schema

FILL = text("""
    INSERT INTO task (user_id, title, description, completed, priority, category, tags,
                      created_at, updated_at, due_date, reminder_sent, due_all_day, due_local)
    SELECT CASE WHEN g % 4 = 0 THEN 'user-7' ELSE 'user-' || (g % 40) END,
           'title ' || g, 'description ' || g, g % 3 = 0,
           (ARRAY['low', 'medium', 'high'])[g % 3 + 1]::taskpriority, 'c' || (g % 7), '["t"]',
           now() - g * interval '1 minute', now() - g * interval '1 second',
           CASE WHEN g % 5 = 0 THEN NULL ELSE now() + (g - 10000) * interval '1 hour' END, false,
           g % 5 = 1, CASE WHEN g % 5 = 1 THEN date_trunc('day', now() + (g - 10000) * interval '1 hour') END
    FROM generate_series(1, 40000) AS g
""")
FILL_SESSIONS = text("""
    INSERT INTO "user" (id, name, email, "emailVerified")
    SELECT 'user-' || g, 'User ' || g, 'user-' || g || '@example.com', false FROM generate_series(0, 39) AS g;
    INSERT INTO "session" (id, "expiresAt", token, "updatedAt", "userId")
    SELECT 'session-' || g, now() + interval '7 days', 'token-' || g, now(), 'user-' || (g % 40)
    FROM generate_series(1, 20000) AS g
""")
SETTINGS = text("""
    INSERT INTO user_settings (user_id, time_zone, updated_at)
    SELECT 'user-' || g, 'Europe/Berlin', now() FROM generate_series(0, 39) AS g
""")


@pytest.fixture(scope="module")
def explain(postgres_url):
    name = "todo_api_plans_" + postgres_url.rsplit("_", 1)[-1]
    admin = create_engine(normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    app = create_app(base_config(postgres_url.rsplit("/", 1)[0] + "/" + name))
    create_schema(get_engine(app), app.config, with_auth_tables=True)
    connection = get_engine(app).connect()
    connection.execute(FILL)
    connection.execute(FILL_SESSIONS)
    connection.execute(SETTINGS)
    connection.execute(text("ANALYZE task"))
    connection.execute(text("ANALYZE user_settings"))
    connection.execute(text('ANALYZE "session"'))
    cursors = listing.get_cursors(app)
    lookup_sql = str(get_sessions(app).lookup.compile(dialect=connection.dialect))

    def plan(user_id="user-7", **parameters):
        query = dataclasses.replace(list_query_schema.load({}), **parameters)  # the defaults, and these
        query = listing.placed_in_zone(connection, user_id, query)  # as find_tasks does
        statement = listing.list_statement(user_id, query, "postgresql", cursors)
        sql = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
        if query.q is None:
            return "\n".join(connection.execute(text(f"EXPLAIN {sql}")).scalars())
        # A search's SELECT reads the word from its transaction's setting, as the service runs it.
        with transaction(connection, setting=(listing.SEARCH_SETTING, listing.LITERAL_REGEX + query.q)):
            return "\n".join(connection.execute(text(f"EXPLAIN {sql}")).scalars())

    def lookup_plan(token):
        return "\n".join(connection.exec_driver_sql(f"EXPLAIN {lookup_sql}", {"digest": token_digest(token)}).scalars())

    guard = get_sessions(app).guard

    def plain_plan(**shape):
        """The plan of a plain list as the task route sends it: the session checked in its WHERE clause."""
        statement = listing.plain_list_statement(guard=guard, **shape)
        params = {"owner_id": "user-7", "digest": token_digest("no-such-token"), "page_limit": 1001}
        sql = str(statement.compile(dialect=connection.dialect))
        return "\n".join(connection.exec_driver_sql(f"EXPLAIN {sql}", params).scalars())

    plan.plain = plain_plan
    plan.cursors = cursors
    plan.connection = connection
    plan.lookup = lookup_plan
    yield plan
    connection.close()
    get_engine(app).dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def assert_index_range_scan(plan, index):
    scan = plan.splitlines()[1]
    assert f"Index Scan using {index} on task" in scan or f"Index Scan Backward using {index} on task" in scan, plan
    assert "(user_id)::text = 'user-7'::text" in plan.splitlines()[2], plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan


def test_default_listing(explain):
    assert_index_range_scan(explain(), "ix_task_user_created")


@pytest.mark.parametrize(
    ("status", "sort_by", "descending", "index"),
    [
        ("all", "created_at", True, "ix_task_user_created"),
        ("pending", "created_at", False, "ix_task_user_created"),
        ("all", "due_date", False, "ix_task_user_due_asc"),
    ],
)
def test_the_plain_list_with_the_session_check_is_still_a_range_scan(explain, status, sort_by, descending, index):
    """The session is checked once, by its index, before the range scan (a one-time filter), not per row."""
    plan = explain.plain(status=status, sort_by=sort_by, descending=descending)
    assert "Index Scan using ix_session_token_digest on session" in plan, plan
    assert "One-Time Filter: $0" in plan, plan
    assert f"using {index} on task" in plan and "Index Cond: ((user_id)::text = 'user-7'::text)" in plan, plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan


def test_status_and_priority_filter(explain):
    assert_index_range_scan(explain(status="pending", priority=["high", "low"], limit=50), "ix_task_user_created")


@pytest.mark.parametrize(
    ("sort_by", "sort_order", "index"),
    [
        ("created_at", "asc", "ix_task_user_created"),
        ("created_at", "desc", "ix_task_user_created"),
        ("title", "asc", "ix_task_user_title"),
        ("title", "desc", "ix_task_user_title"),
        ("priority", "asc", "ix_task_user_priority"),
        ("priority", "desc", "ix_task_user_priority"),
        ("due_date", "asc", "ix_task_user_due_asc"),
        ("due_date", "desc", "ix_task_user_due_desc"),
    ],
)
def test_each_sort(explain, sort_by, sort_order, index):
    assert_index_range_scan(explain(sort_by=sort_by, sort_order=sort_order, limit=50), index)


@pytest.mark.parametrize("sort_order", ["asc", "desc"])
def test_sorting_by_updated_at_sorts_the_callers_rows(explain, sort_order):
    """No index holds `updated_at`, which every write changes: one would keep every task update from being
    made in place (migration 0008). A page sorted by it is a top-N sort of the caller's rows, found by index."""
    plan = explain(sort_by="updated_at", sort_order=sort_order, limit=50)
    direction = " DESC" if sort_order == "desc" else ""
    assert f"Sort Key: updated_at{direction}, id{direction}" in plan, plan
    assert re.search(r"Index Scan (Backward )?(using|on) ix_task_user_\w+", plan), plan
    assert "Index Cond: ((user_id)::text = 'user-7'::text)" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize(
    ("sort_by", "index"), [("created_at", "ix_task_user_created"), ("title", "ix_task_user_title")]
)
def test_a_deep_page_starts_inside_the_index(explain, sort_by, index):
    row = SimpleNamespace(id=20000, created_at=datetime(2026, 1, 1), title="title 5")
    cursor = explain.cursors.dump(sort_by, True, row)
    plan = explain(sort_by=sort_by, limit=50, cursor=cursor)
    assert_index_range_scan(plan, index)
    condition = plan.splitlines()[2]
    assert "Index Cond:" in condition and f"ROW({sort_by}" in condition.replace("(title)::text", "title"), plan


@pytest.fixture(scope="module")
def search_user(explain):
    """A user with 40,000 tasks: enough that the planner prefers the trigram indexes to filtering every row."""
    explain.connection.execute(
        text(
            "INSERT INTO task (user_id, title, description, completed, priority, tags, created_at, updated_at, "
            "reminder_sent) SELECT 'user-search', 'title ' || g, 'description ' || g, false, 'medium', '[]', "
            "now() - g * interval '1 minute', now(), false FROM generate_series(1, 40000) AS g"
        )
    )
    explain.connection.execute(text("ANALYZE task"))
    return "user-search"


@pytest.mark.parametrize("word", ["milk", "title 1234", "Description 39999"])
def test_a_search_is_served_by_both_trigram_indexes_with_the_word_read_at_run_time(explain, search_user, word):
    plan = explain(search_user, q=word, limit=50)
    assert "BitmapOr" in plan, plan
    for index, column in (("ix_task_title_trgm", "title"), ("ix_task_description_trgm", "description")):
        scan = plan.index(f"Bitmap Index Scan on {index}")
        condition = plan[scan:].splitlines()[1]
        assert f"(user_id)::text = '{search_user}'::text" in condition, plan
        assert f"(({column})::text ~* current_setting('todo_api.search'::text))" in condition, plan
    assert "Seq Scan" not in plan and word not in plan, plan


def test_the_session_lookup_is_an_index_scan_by_token_digest(explain):
    plan = explain.lookup("token-1234").splitlines()
    assert "Index Scan using ix_session_token_digest on session" in plan[0], plan
    assert plan[1].strip().startswith("Index Cond: (todo_api_token_digest(token) = '\\x"), plan
    assert 'Filter: ("expiresAt" > now())' in plan[2], plan


def assert_task_range_scan(plan, index):
    """The task rows come from one index range scan of the caller's rows, in the index's order;
    the caller's time zone, when the filter needs it, is read once beside it (an InitPlan)."""
    lines = plan.splitlines()
    (scan,) = [n for n, line in enumerate(lines) if " on task " in line]
    scanned = {f"Index Scan using {index} on task", f"Index Scan Backward using {index} on task"}
    assert any(kind in lines[scan] for kind in scanned), plan
    assert "Index Cond:" in lines[scan + 1] and "(user_id)::text = 'user-7'::text" in lines[scan + 1], plan
    assert "Sort" not in plan and "Seq Scan on task" not in plan, plan
    return lines[scan + 1]


@pytest.mark.parametrize("limit", [50, 200])
@pytest.mark.parametrize(
    ("sort", "index"),
    [
        ({}, "ix_task_user_created"),
        ({"sort_by": "due_date", "sort_order": "asc"}, "ix_task_user_due_asc"),
        ({"sort_by": "due_date", "sort_order": "desc"}, "ix_task_user_due_desc"),
    ],
)
@pytest.mark.parametrize("overdue", [True, False])
def test_overdue_in_the_users_zone_keeps_one_range_scan(explain, overdue, sort, index, limit):
    plan = explain(overdue=overdue, limit=limit, **sort)
    assert_task_range_scan(plan, index)
    assert "InitPlan" in plan and "user_settings" in plan, plan


@pytest.mark.parametrize("sort_order", ["asc", "desc"])
@pytest.mark.parametrize(
    "bounds",
    [
        {"due_before": WallClock(datetime(2030, 1, 1), True)},
        {"due_after": WallClock(datetime(2027, 6, 1, 9, 30), False)},
        {"due_after": WallClock(datetime(2027, 1, 1), True), "due_before": datetime(2030, 1, 1)},
    ],
)
def test_a_wall_clock_bound_is_part_of_the_index_range(explain, bounds, sort_order):
    plan = explain(sort_by="due_date", sort_order=sort_order, **bounds)
    condition = assert_task_range_scan(plan, f"ix_task_user_due_{sort_order}")
    berlin = {
        "2030-01-01": "2029-12-31 23:00:00",
        "2027-06-01": "2027-06-01 07:30:00",
        "2027-01-01": "2026-12-31 23:00:00",
    }
    for bound in bounds.values():
        instant = berlin[bound.local.date().isoformat()] if isinstance(bound, WallClock) else str(bound)
        assert f"'{instant}'::timestamp without time zone" in condition, plan


def test_a_wall_clock_bound_on_another_sort_filters_a_range_scan(explain):
    plan = explain(due_before=WallClock(datetime(2030, 1, 1), True), limit=50)
    assert_task_range_scan(plan, "ix_task_user_created")
    assert "Filter: (due_date < '2029-12-31 23:00:00'::timestamp without time zone)" in plan, plan
