"""What a browser's JavaScript `Date` makes of the strings this API returns.

A small model of the three operations the frontend uses, in a browser whose
time zone is `browser_zone` (a zoneinfo name):

- `new Date(string)` (ECMA-262, Date Time String Format): a date alone
  (`2026-01-30`) is UTC midnight; a date-time without an offset
  (`2026-01-30T10:00:00`) is local time in the browser's zone; a date-time with
  `Z` or `+HH:MM` is that instant. Fractions beyond milliseconds are cut off.
- `toLocaleDateString()`: the calendar date in the browser's zone.
- `toISOString()`: the instant in UTC, `YYYY-MM-DDTHH:MM:SS.sssZ`.

Anything else (a string outside the format) is an error here rather than the
browser's implementation-defined guess, so a test cannot pass by accident.
"""

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

FORMAT = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?"
    r"(?P<offset>Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


def new_date(text, browser_zone):
    """The instant (aware, UTC) that `new Date(text)` holds in a browser in `browser_zone`."""
    match = FORMAT.fullmatch(text)
    if match is None:
        raise ValueError(f"not in the Date Time String Format: {text!r}")
    fields = match.groupdict()
    milliseconds = int((fields["fraction"] or "0")[:3].ljust(3, "0"))
    wall = datetime(
        int(fields["year"]),
        int(fields["month"]),
        int(fields["day"]),
        int(fields["hour"] or 0),
        int(fields["minute"] or 0),
        int(fields["second"] or 0),
        milliseconds * 1000,
    )
    if fields["hour"] is None:  # a date alone is UTC
        return wall.replace(tzinfo=UTC)
    offset = fields["offset"]
    if offset is None:  # a date-time without an offset is local time
        return wall.replace(tzinfo=ZoneInfo(browser_zone)).astimezone(UTC)
    if offset == "Z":
        return wall.replace(tzinfo=UTC)
    sign = 1 if offset[0] == "+" else -1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    return (wall - sign * timedelta(hours=hours, minutes=minutes)).replace(tzinfo=UTC)


def to_locale_date_string(instant, browser_zone):
    """The calendar date the browser shows for the instant."""
    return instant.astimezone(ZoneInfo(browser_zone)).date()


def to_iso_string(instant):
    utc = instant.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def shown_date(due_date, browser_zone):
    """TaskCard.tsx: `new Date(todo.due_date).toLocaleDateString()`."""
    return to_locale_date_string(new_date(due_date, browser_zone), browser_zone)


def prefilled_date(due_date, browser_zone):
    """page.tsx, openEditModal: `new Date(todo.due_date).toISOString().split('T')[0]`."""
    return to_iso_string(new_date(due_date, browser_zone)).split("T")[0]
