"""Finding tasks: filters, sorts and keyset pagination for `GET /api/tasks`.

Every list query is a range scan of the caller's rows on an index that
matches its sort (see migration 0002), so a page costs the same at any list
size. Pages are cut with a cursor (the last row's sort value and id), never
OFFSET, after `limit` tasks (1,000 without one) or before the task that would
take the body over its byte budget, whichever comes first. Every value a user
sends is a bound parameter.

`q` is matched literally and case-insensitively in title and description. On
Postgres that is a regular expression in literal mode (`~* '***=word'`): the
trigram indexes serve it as they serve ILIKE, and its matcher is a lazy DFA,
so a row costs time linear in its length (ILIKE's `%word%` backtracks: a
keyword of 199 'a's and a 'b' cost 200 steps per character of a long
description). The word itself never appears in the SELECT's text: it is set
for the transaction with `set_config` and read by `current_setting`, so when
the SELECT is cancelled (by the search's own statement timeout) the
statement Postgres writes to its log holds no search word. On SQLite, which
has no server log, it is a LIKE with a bound pattern (wildcards escaped).

Due dates sort and filter by their instants. `overdue` reads the caller's time
zone in the list's own statement (an uncorrelated subquery, computed once). A
due_before/due_after given without an offset is placed in the caller's zone
before the statement is built, so the planner sees the bound it plans the
index range with (a bound computed by the statement itself is unknown to it,
and it then guesses the range nearly empty and sorts); that costs one indexed
lookup of the zone, for those lists only.
"""

import dataclasses
import functools
import logging
from datetime import datetime

import orjson
from flask import Flask, current_app
from itsdangerous import BadSignature, URLSafeSerializer
from marshmallow import ValidationError
from psycopg2.errors import QueryCanceled
from sqlalchemy import DateTime, Text, and_, bindparam, exists, func, literal, literal_column, or_, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import ServiceUnavailable

from todo_api.auth.sessions import Caller
from todo_api.db.connections import transaction
from todo_api.db.driver import run_on_driver
from todo_api.db.tables import MAX_TASK_ID, PRIORITIES, SHOWN_TASK_COLUMNS, task
from todo_api.http.json import OPTIONS as JSON_OPTIONS
from todo_api.tasks.schemas import ListQuery, WallClock, storable_text
from todo_api.tasks.store import time_zone_name_sql, time_zone_of
from todo_api.timezones import local_to_utc, utcnow

log = logging.getLogger(__name__)

EMPTY_PAGE = b'{"data":[]}'
# A task's JSON without its texts is longer than this (its keys alone take about 250 bytes).
MIN_TASK_JSON_BYTES = 200
SEARCH_RETRY_AFTER_SECONDS = 5

CEILING = 1000  # rows per response when the client sets no limit
# The search word, for the search's transaction only (see the module's docstring).
SEARCH_SETTING = "todo_api.search"
SEARCH_PATTERN = func.current_setting(literal_column(f"'{SEARCH_SETTING}'"), type_=Text)
LITERAL_REGEX = "***="  # an ARE that starts with this is a literal string: no character is special
# The text the priority indexes are built on (migration 0002), so the planner matches it.
_RANKS = " ".join(f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(PRIORITIES))
PRIORITY_RANK = literal_column(f"(CASE task.priority {_RANKS} END)")
SORT_KEYS = {
    "created_at": task.c.created_at,
    "updated_at": task.c.updated_at,
    "due_date": task.c.due_date,
    "priority": PRIORITY_RANK,
    "title": task.c.title,
}
DATETIME_KEYS = {"created_at", "updated_at", "due_date"}
CURSOR_SALT = "todo-api.task-cursor"
_EXTENSION = "todo_api.cursors"


def escape_like(value):
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filters(query: ListQuery, dialect, user_id):
    """SQL conditions for the filters in a list query of this user's tasks
    (its due_before and due_after already instants: see `placed_in_zone`)."""
    conditions = []
    if query.status != "all":
        conditions.append(task.c.completed.is_(query.status == "completed"))
    if query.priority:
        conditions.append(task.c.priority.in_(query.priority))
    if query.category is not None:
        conditions.append(task.c.category == query.category)
    if query.tags:
        conditions.append(has_tags(query.tags, dialect))
    if query.q:
        conditions.append(matches(query.q, dialect))
    if query.due_before is not None:
        conditions.append(task.c.due_date < query.due_before)
    if query.due_after is not None:
        conditions.append(task.c.due_date > query.due_after)
    now = utcnow()
    if query.overdue is not None:
        # An all-day task is overdue once its day has ended in the caller's zone.
        zone_name = time_zone_name_sql(user_id)
        today_began = select(func.todo_day_start(zone_name, literal(now, DateTime), type_=DateTime)).scalar_subquery()
        overdue = and_(
            task.c.due_date < now,
            task.c.completed.is_(False),
            or_(task.c.due_all_day.is_(False), task.c.due_date < today_began),
        )
        conditions.append(overdue if query.overdue else ~overdue | task.c.due_date.is_(None))
    if query.reminder_due is not None:
        due = and_(task.c.remind_at <= now, task.c.reminder_sent.is_(False))
        conditions.append(due if query.reminder_due else ~due | task.c.remind_at.is_(None))
    return conditions


def matches(word, dialect):
    """Tasks whose title or description holds `word`, case-insensitively (see the module's docstring)."""
    if dialect == "postgresql":
        return or_(task.c.title.op("~*")(SEARCH_PATTERN), task.c.description.op("~*")(SEARCH_PATTERN))
    pattern = f"%{escape_like(word)}%"
    return or_(task.c.title.ilike(pattern, escape="\\"), task.c.description.ilike(pattern, escape="\\"))


def has_tags(tags, dialect):
    """Tasks that carry every one of `tags`."""
    if dialect == "postgresql":
        return task.c.tags.cast(JSONB).op("@>")(literal(tags, JSONB))
    each_tag = func.json_each(task.c.tags).table_valued("value")
    return and_(*(exists().where(each_tag.c.value == tag) for tag in tags))


def order_by(sort_by, descending):
    key = SORT_KEYS[sort_by]
    key_order = key.desc() if descending else key.asc()
    if sort_by == "due_date":  # tasks without a due date sort last either way
        key_order = key_order.nulls_last()
    return [key_order, task.c.id.desc() if descending else task.c.id.asc()]


def after(sort_by, descending, value, last_id):
    """Rows strictly after (value, last_id) in the sort order."""
    key = SORT_KEYS[sort_by]
    if descending:
        beyond = tuple_(key, task.c.id) < tuple_(value, last_id)
    else:
        beyond = tuple_(key, task.c.id) > tuple_(value, last_id)
    if sort_by != "due_date":
        return beyond
    if value is None:  # already among the tasks without a due date
        return and_(key.is_(None), task.c.id < last_id if descending else task.c.id > last_id)
    return or_(beyond, key.is_(None))


def refused(reason="Not a valid cursor."):
    return ValidationError({"cursor": [reason]})


def cursor_value(sort_by, value):
    """A cursor's sort value as the query compares it; 422 unless it is what `Cursors.dump` writes for this sort."""
    if sort_by == "due_date" and value is None:  # the only key that may be null
        return None
    if not isinstance(value, str):
        raise refused()
    if sort_by in DATETIME_KEYS:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise refused() from None
        if moment.tzinfo is not None:  # naive UTC, like the columns
            raise refused()
        return moment
    if sort_by == "priority":
        if value not in PRIORITIES:
            raise refused()
        return PRIORITIES.index(value)
    try:
        storable_text(value)  # no stored title holds NUL or a lone surrogate, and the database refuses them
    except ValidationError:
        raise refused() from None
    return value


class Cursors:
    """Opaque, signed page cursors: an edited cursor is refused, not followed.

    A cursor is `[sort_by, descending, value, id]`, signed. Its content is checked
    as strictly as its signature: a cursor whose content could not have come from
    `dump` (signed with a leaked key, or by an older version) is a 422, never a
    query with a value of the wrong type.
    """

    def __init__(self, secret):
        self.serializer = URLSafeSerializer(secret, salt=CURSOR_SALT)

    def dump(self, sort_by, descending, row):
        value = getattr(row, sort_by)
        if isinstance(value, datetime):
            value = value.isoformat()
        return self.serializer.dumps([sort_by, descending, value, row.id])

    def load(self, cursor, sort_by, descending):
        """The (value, id) a page continues after; 422 for a cursor that is not one of ours for this sort."""
        try:
            content = self.serializer.loads(cursor)
        except (BadSignature, ValueError, TypeError):
            raise refused() from None
        if not (isinstance(content, list) and len(content) == 4):
            raise refused()
        cursor_sort, cursor_descending, value, last_id = content
        if not (isinstance(cursor_sort, str) and isinstance(cursor_descending, bool)):
            raise refused()
        if (cursor_sort, cursor_descending) != (sort_by, descending):
            raise refused("The cursor belongs to another sort order.")
        if type(last_id) is not int or not 0 < last_id <= MAX_TASK_ID:  # bool is an int too
            raise refused()
        return cursor_value(sort_by, value), last_id


def init_app(app: Flask, secret: str) -> None:
    """Sign page cursors with `secret`."""
    app.extensions[_EXTENSION] = Cursors(secret)


def get_cursors(app: Flask | None = None) -> Cursors:
    return (app or current_app).extensions[_EXTENSION]


def list_statement(user_id, query: ListQuery, dialect, cursors):
    """The SELECT for one page (one row more than asked, to tell whether more follow)."""
    sort_by, descending = query.sort_by, query.descending
    statement = (
        select(*SHOWN_TASK_COLUMNS)
        .where(task.c.user_id == user_id, *filters(query, dialect, user_id))
        .order_by(*order_by(sort_by, descending))
        .limit(page_size(query) + 1)
    )
    if query.cursor:
        statement = statement.where(after(sort_by, descending, *cursors.load(query.cursor, sort_by, descending)))
    return statement


def is_plain(query: ListQuery) -> bool:
    """A first page with no filter but the status: the frontend's list, served by a statement built once."""
    return not query.cursor and all(
        value is None or value == []
        for value in (
            query.priority,
            query.category,
            query.tags,
            query.q,
            query.due_before,
            query.due_after,
            query.overdue,
            query.reminder_due,
        )
    )


@functools.lru_cache(maxsize=64)
def plain_list_statement(status: str, sort_by: str, descending: bool, guard):
    """The SELECT of a plain list (`is_plain`), under the caller's session's `guard`: its parameters are
    `owner_id`, `page_limit` (one more than the page) and the guard's. Built once per shape (30 at most)."""
    statement = select(*SHOWN_TASK_COLUMNS).where(task.c.user_id == bindparam("owner_id"))
    if status != "all":
        statement = statement.where(task.c.completed.is_(status == "completed"))
    statement = statement.where(guard)
    return statement.order_by(*order_by(sort_by, descending)).limit(bindparam("page_limit"))


def page_size(query: ListQuery) -> int:
    return query.limit or CEILING


def placed_in_zone(db, user_id, query: ListQuery) -> ListQuery:
    """The query, with a due_before/due_after given as a date or a wall-clock time turned into
    the instant it stands for in the user's zone (a date: the moment its day begins)."""
    bounds = {"due_before": query.due_before, "due_after": query.due_after}
    wall_clock = {name: value for name, value in bounds.items() if isinstance(value, WallClock)}
    if not wall_clock:
        return query
    time_zone = time_zone_of(db, user_id)
    instants = {name: local_to_utc(value.local, time_zone) for name, value in wall_clock.items()}
    return dataclasses.replace(query, **instants)


class SearchTooSlow(ServiceUnavailable):
    """A search ran past SEARCH_STATEMENT_TIMEOUT_MS and was cancelled.

    503, not 422: the keyword is valid, and the same search may finish on a
    less busy database; but a keyword found in fewer tasks is the better bet.
    """

    description = "The search took too long; try a more specific keyword"


def find_tasks(db, caller: Caller, query: ListQuery, cursors, search_timeout_ms=0):
    """The rows of one page of the caller's tasks, and one more when more follow; none when their session is
    dead (the SELECT checks it).

    On Postgres a search runs in a transaction of its own that holds the search
    word in a setting (`SEARCH_SETTING`); its SELECT is bounded by
    `search_timeout_ms` (0: the database's default statement timeout), and a
    cancelled search is `SearchTooSlow`.
    """
    params = caller.params
    if is_plain(query):
        statement = plain_list_statement(query.status, query.sort_by, query.descending, caller.guard)
        return run_on_driver(db, statement, {**params, "page_limit": page_size(query) + 1})
    query = placed_in_zone(db, caller.user_id, query)
    statement = list_statement(caller.user_id, query, db.dialect.name, cursors).where(caller.guard)
    if not query.q or db.dialect.name != "postgresql":
        return db.execute(statement, params).all()
    options = {"statement_timeout_ms": search_timeout_ms} if search_timeout_ms else {}
    try:
        with transaction(db, setting=(SEARCH_SETTING, LITERAL_REGEX + query.q)):
            return db.execute(statement, params, execution_options=options).all()
    except OperationalError as error:
        if not isinstance(error.orig, QueryCanceled):
            raise
        log.warning("search cancelled: %s", type(error.orig).__name__)
        raise SearchTooSlow(retry_after=SEARCH_RETRY_AFTER_SECONDS) from None


def page_body(rows, query: ListQuery, cursors, output, max_bytes):
    """The JSON body of one page: `{"data": [...]}`, and `next_cursor` when more tasks follow.

    The page ends after `limit` tasks (1,000 without one), or before the task
    that would take the body over `max_bytes`, whichever comes first; it always
    holds at least one task when there is one. Either way `next_cursor` goes on
    from its last task. `output` turns a row into the task as shown.
    """
    page = rows_that_may_fit(rows[: page_size(query)], max_bytes)
    body = {"data": [output(row) for row in page]}
    if len(page) < len(rows):
        body["next_cursor"] = cursors.dump(query.sort_by, query.descending, page[-1])
    serialized = orjson.dumps(body, option=JSON_OPTIONS)
    if len(serialized) <= max_bytes or len(page) <= 1:
        return serialized
    return _cut_page(
        [orjson.dumps(task, option=JSON_OPTIONS) for task in body["data"]], page, query, cursors, max_bytes
    )


def rows_that_may_fit(page, max_bytes):
    """The first rows of `page` that may fit in a body of `max_bytes`, and the first one that cannot (if any).

    Each row's JSON is at least MIN_TASK_JSON_BYTES and its texts (a UTF-8 byte
    per character at least): rows past the one where that lower bound runs over
    cannot be shown, and are never serialized. A page of 1,000 tasks of 10 KB
    costs the 1 MiB it shows, not the 10 MB it fetched.
    """
    size = len(EMPTY_PAGE)
    for count, row in enumerate(page, 1):
        size += MIN_TASK_JSON_BYTES + len(row.title) + len(row.description or "") + sum(map(len, row.tags or ()))
        if size > max_bytes:
            return page[:count]
    return page


def _cut_page(tasks, page, query: ListQuery, cursors, max_bytes):
    """A page of serialized `tasks` too long for `max_bytes`, cut before the first task that does not fit."""
    size = len(EMPTY_PAGE) + len(tasks[0])
    for count in range(1, len(tasks)):
        grown = size + len(tasks[count]) + 1  # a comma between tasks
        if grown > max_bytes:
            del tasks[count:]
            break
        size = grown
    while True:  # the cursor must fit too: give back tasks until it does, keeping one
        cursor = cursors.dump(query.sort_by, query.descending, page[len(tasks) - 1])
        cursor_field = b',"next_cursor":' + orjson.dumps(cursor)
        if size + len(cursor_field) <= max_bytes or len(tasks) == 1:
            return EMPTY_PAGE[:-2] + b",".join(tasks) + b"]" + cursor_field + b"}"
        size -= len(tasks.pop()) + 1
