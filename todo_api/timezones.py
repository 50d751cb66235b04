"""Wall-clock times in a user's time zone, and the UTC instants they stand for.

Every timestamp column holds naive UTC (the reference backend's form); `naive_utc`
is the one conversion to it, and `utcnow` the service's clock.

A due date given without an offset (a calendar date, or a date and time) is a
time on the user's wall clock. The database keeps it as given and also keeps
the UTC instant it stands for, which filters, sorts and the list indexes use.

One rule turns a wall-clock time into an instant, here in Python and in SQL
(`todo_local_to_utc`, a function of the database: created by migration 0007
on Postgres, registered on each connection on SQLite):

- a time that does not exist (the hour skipped when clocks go forward) is
  read with the offset before the change, so it moves forward by the gap:
  02:30 on the last Sunday of March in Europe/Berlin is 03:30 CEST;
- a time that happens twice (the hour repeated when clocks go back) is its
  first occurrence: 02:30 on the last Sunday of October in Europe/Berlin is
  02:30 CEST (00:30 UTC).

That is Python's `fold=0`. Postgres's own `timezone(zone, timestamp)` reads
the repeated hour as its second occurrence, so the SQL function checks the
candidate taken with the offset of the day before, which is the first
occurrence whenever the time is ambiguous.
"""

import functools
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo, available_timezones

DEFAULT_TIME_ZONE = "UTC"
# IANA names, as spelt there. `localtime` is the server's own zone and
# `posixrules` and `Factory` placeholders; none is a zone a user lives in.
TIME_ZONES = frozenset(available_timezones() - {"localtime", "posixrules", "Factory"})
# In SQL, an instant past the calendar's end is kept at its last microsecond (a stored
# wall-clock time late in the year 9999, read in a zone far west).
LATEST = datetime.max


@functools.cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def naive_utc(moment: datetime) -> datetime:
    """An aware moment in the form the timestamp columns hold: naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def utcnow() -> datetime:
    """Now, as naive UTC."""
    return naive_utc(datetime.now(UTC))


def local_to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """The naive UTC instant of a naive wall-clock time in `tz` (see the module's rule).

    OverflowError when it falls past the year 9999."""
    return naive_utc(local.replace(tzinfo=tz, fold=0))


def utc_to_local(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive wall-clock time in `tz` at a naive UTC instant (OverflowError past the year 9999)."""
    return instant.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)


def day_start(instant, tz):
    """The naive UTC instant at which the day containing `instant` began in `tz`."""
    return local_to_utc(datetime.combine(utc_to_local(instant, tz).date(), time()), tz)


# -- SQLite's side of the SQL functions -------------------------------------
# SQLAlchemy stores timestamps on SQLite as fixed-width text, where text order
# is time order; these take and give that form.


def _stored(compute, *args):
    try:
        value = compute(*args)
    except OverflowError:
        value = LATEST
    return value.isoformat(sep=" ", timespec="microseconds")


def sqlite_local_to_utc(zone_name, local):
    if zone_name is None or local is None:
        return None
    return _stored(local_to_utc, datetime.fromisoformat(local), zone(zone_name))


def sqlite_day_start(zone_name, instant):
    if zone_name is None or instant is None:
        return None
    return _stored(day_start, datetime.fromisoformat(instant), zone(zone_name))


def register_sqlite_functions(dbapi_connection):
    dbapi_connection.create_function("todo_local_to_utc", 2, sqlite_local_to_utc, deterministic=True)
    dbapi_connection.create_function("todo_day_start", 2, sqlite_day_start, deterministic=True)
