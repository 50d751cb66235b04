"""Finding tasks: filters, sorts and keyset pagination for `GET /api/tasks`.

Every list query is a range scan of the caller's rows on an index that
matches its sort (see migration 0002), so a page costs the same at any list
size. Pages are cut with a cursor (the last row's sort value and id), never
OFFSET. Every value a user sends is a bound parameter; `q` is matched
literally (LIKE wildcards are escaped).

Due dates sort and filter by their instants. `overdue` reads the caller's time
zone in the list's own statement (an uncorrelated subquery, computed once). A
due_before/due_after given without an offset is placed in the caller's zone
before the statement is built, so the planner sees the bound it plans the
index range with (a bound computed by the statement itself is unknown to it,
and it then guesses the range nearly empty and sorts); that costs one indexed
lookup of the zone, for those lists only.
"""

from datetime import datetime

from itsdangerous import BadSignature, URLSafeSerializer
from marshmallow import ValidationError
from sqlalchemy import DateTime, and_, exists, func, literal, literal_column, or_, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB

from .models import task, time_zone_name_sql, time_zone_of, utcnow
from .schemas import WallClock
from .timezones import local_to_utc

CEILING = 1000  # rows per response when the client sets no limit
PRIORITY_RANK = literal_column("(CASE task.priority WHEN 'low' THEN 0 WHEN 'medium' THEN 1 WHEN 'high' THEN 2 END)")
SORT_KEYS = {
    "created_at": task.c.created_at,
    "updated_at": task.c.updated_at,
    "due_date": task.c.due_date,
    "priority": PRIORITY_RANK,
    "title": task.c.title,
}
DATETIME_KEYS = {"created_at", "updated_at", "due_date"}


def escape_like(value):
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filters(query, dialect, user_id):
    """SQL conditions for the filters in a validated list query of this user's tasks
    (its due_before and due_after already instants: see `placed_in_zone`)."""
    conditions = []
    status = query.get("status", "all")
    if status != "all":
        conditions.append(task.c.completed.is_(status == "completed"))
    if query.get("priority"):
        conditions.append(task.c.priority.in_(query["priority"]))
    if query.get("category") is not None:
        conditions.append(task.c.category == query["category"])
    if query.get("tags"):
        conditions.append(has_tags(query["tags"], dialect))
    if query.get("q"):
        pattern = f"%{escape_like(query['q'])}%"
        conditions.append(or_(task.c.title.ilike(pattern, escape="\\"), task.c.description.ilike(pattern, escape="\\")))
    if query.get("due_before") is not None:
        conditions.append(task.c.due_date < query["due_before"])
    if query.get("due_after") is not None:
        conditions.append(task.c.due_date > query["due_after"])
    now = utcnow()
    if query.get("overdue") is not None:
        # An all-day task is overdue once its day has ended in the caller's zone.
        zone_name = time_zone_name_sql(user_id)
        today_began = select(func.todo_day_start(zone_name, literal(now, DateTime), type_=DateTime)).scalar_subquery()
        overdue = and_(
            task.c.due_date < now,
            task.c.completed.is_(False),
            or_(task.c.due_all_day.is_(False), task.c.due_date < today_began),
        )
        conditions.append(overdue if query["overdue"] else ~overdue | task.c.due_date.is_(None))
    if query.get("reminder_due") is not None:
        due = and_(task.c.remind_at <= now, task.c.reminder_sent.is_(False))
        conditions.append(due if query["reminder_due"] else ~due | task.c.remind_at.is_(None))
    return conditions


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


class Cursors:
    """Opaque, signed page cursors: an edited cursor is refused, not followed."""

    def __init__(self, secret):
        self.serializer = URLSafeSerializer(secret, salt="todo-api.task-cursor")

    def dump(self, sort_by, descending, row):
        value = row.priority if sort_by == "priority" else row._mapping[sort_by]
        if isinstance(value, datetime):
            value = value.isoformat()
        return self.serializer.dumps([sort_by, descending, value, row.id])

    def load(self, cursor, sort_by, descending):
        try:
            cursor_sort, cursor_descending, value, last_id = self.serializer.loads(cursor)
        except (BadSignature, ValueError, TypeError):
            raise ValidationError({"cursor": ["Not a valid cursor."]}) from None
        if (cursor_sort, cursor_descending) != (sort_by, descending):
            raise ValidationError({"cursor": ["The cursor belongs to another sort order."]})
        if value is not None and sort_by in DATETIME_KEYS:
            value = datetime.fromisoformat(value)
        if sort_by == "priority" and value is not None:
            value = ("low", "medium", "high").index(value)
        return value, last_id


def list_statement(user_id, query, dialect, cursors):
    """The SELECT for one page (one row more than asked, to tell whether more follow)."""
    sort_by, descending, limit = sort_of(query)
    statement = (
        select(task)
        .where(task.c.user_id == user_id, *filters(query, dialect, user_id))
        .order_by(*order_by(sort_by, descending))
        .limit(limit + 1)
    )
    if query.get("cursor"):
        statement = statement.where(after(sort_by, descending, *cursors.load(query["cursor"], sort_by, descending)))
    return statement


def sort_of(query):
    """(sort key, descending, page size). `GET /api/tasks` defaults to newest first; `filter-sort`
    sets `sort_order` to `asc` when absent, as the frontend's own backend did."""
    return query.get("sort_by", "created_at"), query.get("sort_order", "desc") == "desc", query.get("limit") or CEILING


def placed_in_zone(db, user_id, query):
    """The query, with a due_before/due_after given as a date or a wall-clock time turned into
    the instant it stands for in the user's zone (a date: the moment its day begins)."""
    wall_clock = {name: query[name] for name in ("due_before", "due_after") if isinstance(query.get(name), WallClock)}
    if not wall_clock:
        return query
    time_zone = time_zone_of(db, user_id)
    return {**query, **{name: local_to_utc(value.local, time_zone) for name, value in wall_clock.items()}}


def list_tasks(db, user_id, query, cursors):
    """One page of the caller's tasks and the cursor of the next page (or None)."""
    query = placed_in_zone(db, user_id, query)
    rows = db.execute(list_statement(user_id, query, db.dialect.name, cursors)).all()
    sort_by, descending, limit = sort_of(query)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, cursors.dump(sort_by, descending, rows[-1])
