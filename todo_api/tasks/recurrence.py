"""Recurring tasks: the patterns, and the next occurrence that completing one creates.

A recurring task needs a due date. Completing it (by toggle, `completed: true`
or PUT) creates its next occurrence in the same transaction (see
`task_store.write_task`); the rules for where that falls are `next_occurrence`'s.

Each occurrence has one next occurrence at most. The next occurrence records
the occurrence it came from (`task.recurs_from`, under a unique index), so the
database itself refuses a second one: reopening an occurrence leaves its next
occurrence as it is, and completing it again creates nothing, however often
and however concurrently it is toggled, completed or reopened. If the user
deleted the next occurrence, the next completion of the occurrence creates it
anew: a completed occurrence always ends up with its next one. Edits of an
occurrence after its next one exists (its due date, its pattern) do not move
or replace that next one.
"""

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta
from sqlalchemy.engine import Row

from todo_api.timezones import local_to_utc, utc_to_local, utcnow

RECURRENCE_STEPS = {
    "daily": relativedelta(days=1),
    "weekly": relativedelta(weeks=1),
    "monthly": relativedelta(months=1),
    "yearly": relativedelta(years=1),
}
RECURRENCE_PATTERNS = tuple(RECURRENCE_STEPS)
RECURRING_NEEDS_DUE_DATE = "A recurring task needs a due date."


def next_occurrence(row: Row, time_zone: ZoneInfo) -> dict[str, Any] | None:
    """The column values of a recurring task's next occurrence; `recurs_from` links it to the task.

    The due date moves on the wall clock of the user's zone, so a weekly 09:00
    stays 09:00 across daylight-saving changes, also for a task given with an
    offset (its instant is read in the zone, moved, and converted back); by
    calendar rules (31 January + 1 month is 28 or 29 February; 29 February + 1
    year is 28 February). An all-day task stays all day. A reminder keeps its
    wall-clock distance from the due date. None when it would fall past the
    calendar's end (the year 9999): the series ends there.
    """
    step = RECURRENCE_STEPS[row.recurrence_pattern]
    try:
        due_clock = _on_the_wall_clock(row.due_local, row.due_date, time_zone)
        next_due_clock = due_clock + step
        due_date = local_to_utc(next_due_clock, time_zone)
        remind_at = remind_clock = None
        if row.remind_at is not None:
            remind_clock = next_due_clock + (_on_the_wall_clock(row.remind_local, row.remind_at, time_zone) - due_clock)
            remind_at = local_to_utc(remind_clock, time_zone)
    except (ValueError, OverflowError):  # year 10000
        return None
    now = utcnow()
    return {
        "user_id": row.user_id,
        "title": row.title,
        "description": row.description,
        "completed": False,
        "priority": row.priority,
        "category": row.category,
        "tags": row.tags,
        "due_date": due_date,
        "due_all_day": row.due_all_day,
        "due_local": next_due_clock if row.due_local is not None else None,
        "recurrence_pattern": row.recurrence_pattern,
        "remind_at": remind_at,
        "remind_local": remind_clock if row.remind_local is not None else None,
        "reminder_sent": False,
        "created_at": now,
        "updated_at": now,
        "recurs_from": row.id,
    }


def _on_the_wall_clock(local: datetime | None, instant: datetime, time_zone: ZoneInfo) -> datetime:
    """The wall-clock time as given, or, for a value given with an offset, its instant read in the zone."""
    return local if local is not None else utc_to_local(instant, time_zone)
