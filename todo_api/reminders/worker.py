"""Reminders pushed to the user's browsers: the worker.

A task's reminder comes due at `remind_at`, or, without one, REMINDER_LEAD_MINUTES
before its due date (`reminder_time`, the one place that says so; `DUE` is the
same rule in SQL). Only tasks that are not completed and whose `reminder_sent`
is false, of users with at least one push subscription, are considered.

A pass repeats three steps until nothing is left to do:

1. Claim a batch, in one short transaction. First the deliveries waiting for a
   retry whose time has come; each is checked against its task's current row,
   and dropped if the task was completed or moved (its reminder time is no
   longer the one the delivery was made for) or the subscription now belongs
   to another user. Then, to fill the batch, tasks whose reminder has come due:
   one `push_delivery` row per subscription of the task's user, and
   `reminder_sent` set, together. Claimed rows carry this batch's token and
   `next_attempt_at` = now + LEASE: a worker that dies leaves them to be
   claimed again when the lease ends. On Postgres the rows are selected `FOR
   UPDATE SKIP LOCKED`, so concurrent workers, on any number of machines, never
   claim the same row and never wait for each other; on SQLite the claim
   transaction holds the database's write lock.
2. Push each claimed delivery (REMINDER_PUSH_THREADS at a time, each request
   with a timeout), encrypted and VAPID-signed (see `webpush`).
3. Record the outcomes, in one short transaction: a delivery the push service
   took is deleted; a subscription answered 404 or 410 is deleted (and its
   deliveries with it); a 429, a 5xx, a refused connection or a timeout is
   retried in a later pass, after the service's Retry-After or an exponential
   backoff, never by waiting here, so one slow push service holds up nobody
   else; any other answer drops the delivery.

A reminder is thus pushed once to each subscription. A push is repeated only
when the outcome of a push that was made cannot be recorded (the database is
gone for longer than RECORD_ATTEMPTS cover, or the worker is killed between
push and record): the lease then ends and the delivery is pushed again.

Logs carry task ids and counts, never an endpoint, a key or a token.
"""

import functools
import logging
import secrets
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import DateTime, and_, bindparam, delete, exists, not_, or_, select, update
from sqlalchemy.exc import DBAPIError

from todo_api.db.connections import get_engine, transaction
from todo_api.db.tables import next_version, push_delivery, push_subscription, task, user_settings
from todo_api.db.upsert import DIALECT_INSERTS
from todo_api.reminders.push import PushSender, signer_from_config
from todo_api.timezones import utc_to_local, utcnow

log = logging.getLogger(__name__)

# A claimed delivery is left alone by other workers for this long; a batch
# stops starting pushes at half of it, and gives back the rest.
LEASE = timedelta(minutes=5)
# Retries without Retry-After: 30 s, 1, 2, 4 ... minutes, at most an hour apart.
BACKOFF_BASE_SECONDS = 30
BACKOFF_MAX_SECONDS = 60 * 60
# After this many failed pushes (about 5 hours of backoff) a reminder is given up.
MAX_ATTEMPTS = 12
# Recording outcomes is retried across a database restart: the pushes were made.
RECORD_ATTEMPTS = (0, 1, 2, 4, 8)
DASHBOARD_URL = "/dashboard"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# -- When a reminder is due ------------------------------------------------------------


def reminder_time(remind_at, due_date, lead):
    """When a task's reminder is due (naive UTC): `remind_at`, else `lead` before the due date; None without
    either."""
    if remind_at is not None:
        return remind_at
    if due_date is not None:
        return due_date - lead
    return None


# `reminder_time(...) <= now`, in SQL: `due_by` is now + lead.
DUE = or_(
    task.c.remind_at <= bindparam("now", type_=DateTime),
    and_(task.c.remind_at.is_(None), task.c.due_date <= bindparam("due_by", type_=DateTime)),
)


def reminder_body(due_date, zone, now):
    """The notification's text: the due time in the user's time zone ("Due 17:00", "Due tomorrow 09:30",
    "Due Fri 28 Nov 17:00"), or "Reminder" for a task without a due date."""
    if due_date is None:
        return "Reminder"
    local = utc_to_local(due_date, zone)
    today = utc_to_local(now, zone).date()
    clock = f"{local:%H:%M}"
    day = local.date()
    if day == today:
        return f"Due {clock}"
    if day == today + timedelta(days=1):
        return f"Due tomorrow {clock}"
    year = f" {day.year}" if day.year != today.year else ""
    return f"Due {WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]}{year} {clock}"


@functools.cache
def zone_named(name):
    try:
        return ZoneInfo(name or "UTC")
    except (ValueError, KeyError, OSError):
        return UTC


def payload(delivery, now):
    return orjson.dumps(
        {
            "title": delivery.title,
            "body": reminder_body(delivery.due_date, zone_named(delivery.time_zone), now),
            "task_id": delivery.task_id,
            "url": DASHBOARD_URL,
        }
    )


def backoff_seconds(attempts, retry_after):
    """How long to wait before the next push of a delivery that has failed `attempts` times."""
    if retry_after is not None:
        return max(retry_after, 1.0)
    return float(min(BACKOFF_BASE_SECONDS * 2 ** (attempts - 1), BACKOFF_MAX_SECONDS))


# -- Statements ------------------------------------------------------------------------

_RETRIES_DUE = (
    select(
        push_delivery.c.id,
        push_delivery.c.remind_at.label("claimed_for"),
        push_subscription.c.user_id.label("subscriber"),
        task.c.user_id,
        task.c.completed,
        task.c.remind_at,
        task.c.due_date,
    )
    .join(task, task.c.id == push_delivery.c.task_id)
    .join(push_subscription, push_subscription.c.id == push_delivery.c.subscription_id)
    .where(push_delivery.c.next_attempt_at <= bindparam("now", type_=DateTime))
    .limit(bindparam("batch"))
    .with_for_update(of=push_delivery, skip_locked=True)
)
_TASKS_DUE = (
    select(task.c.id, task.c.user_id, task.c.remind_at, task.c.due_date)
    .where(
        not_(task.c.reminder_sent),
        not_(task.c.completed),
        DUE,
        exists().where(push_subscription.c.user_id == task.c.user_id),
    )
    .limit(bindparam("batch"))
    .with_for_update(of=task, skip_locked=True)
)
# The subscriptions cannot be deleted under the claim (a foreign key will point at them).
_SUBSCRIPTIONS_OF = (
    select(push_subscription.c.id, push_subscription.c.user_id)
    .where(push_subscription.c.user_id.in_(bindparam("users", expanding=True)))
    .with_for_update(read=True, key_share=True)
)
_MARK_SENT = (
    update(task)
    .where(task.c.id.in_(bindparam("ids", expanding=True)))
    .values(reminder_sent=True, updated_at=next_version(task.c.updated_at, bindparam("now", type_=DateTime)))
)
_CLAIM = (
    update(push_delivery)
    .where(push_delivery.c.id.in_(bindparam("ids", expanding=True)))
    .values(claim_token=bindparam("token"), next_attempt_at=bindparam("lease_until", type_=DateTime))
)
_DROP = delete(push_delivery).where(push_delivery.c.id.in_(bindparam("ids", expanding=True)))
_CLAIMED = (
    select(
        push_delivery.c.id,
        push_delivery.c.task_id,
        push_delivery.c.subscription_id,
        push_delivery.c.attempts,
        task.c.title,
        task.c.due_date,
        push_subscription.c.endpoint,
        push_subscription.c.p256dh,
        push_subscription.c.auth,
        user_settings.c.time_zone,
    )
    .join(task, task.c.id == push_delivery.c.task_id)
    .join(push_subscription, push_subscription.c.id == push_delivery.c.subscription_id)
    .outerjoin(user_settings, user_settings.c.user_id == task.c.user_id)
    .where(push_delivery.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(push_delivery.c.id)
)
_MINE = push_delivery.c.claim_token == bindparam("token")
_FINISHED = delete(push_delivery).where(push_delivery.c.id.in_(bindparam("ids", expanding=True)), _MINE)
_GONE = delete(push_subscription).where(push_subscription.c.id.in_(bindparam("ids", expanding=True)))
_RESCHEDULE = (
    update(push_delivery)
    .where(push_delivery.c.id == bindparam("delivery_id"), _MINE)
    .values(
        attempts=bindparam("attempts"),
        next_attempt_at=bindparam("at", type_=DateTime),
        claim_token=None,
    )
)


@functools.cache
def _new_deliveries(dialect):
    """Insert a delivery per (task, subscription), or renew the one left from an earlier reminder time."""
    insert = DIALECT_INSERTS[dialect](push_delivery)
    return insert.on_conflict_do_update(
        index_elements=[push_delivery.c.task_id, push_delivery.c.subscription_id],
        set_={name: insert.excluded[name] for name in ("remind_at", "attempts", "next_attempt_at", "claim_token")},
    ).returning(push_delivery.c.id)


# -- A pass ------------------------------------------------------------------------------


@dataclass
class Settings:
    lead: timedelta
    batch_size: int
    threads: int
    timeout: int

    @classmethod
    def from_config(cls, config):
        return cls(
            lead=timedelta(minutes=config["REMINDER_LEAD_MINUTES"]),
            batch_size=config["REMINDER_BATCH_SIZE"],
            threads=config["REMINDER_PUSH_THREADS"],
            timeout=config["PUSH_TIMEOUT_SECONDS"],
        )


class Worker:
    """Pushes due reminders; `run_pass()` does everything that is due now."""

    def __init__(self, engine, settings, signer):
        self.engine = engine
        self.settings = settings
        self.sender = PushSender(signer, settings.timeout)
        self.pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="push")

    @classmethod
    def from_app(cls, app):
        return cls(get_engine(app), Settings.from_config(app.config), signer_from_config(app.config))

    def close(self):
        self.pool.shutdown()
        self.sender.close()

    def run_pass(self, stop=None, now=None):
        """Claim, push and record batch after batch until nothing is due; between batches, return early when
        `stop` is set. `now` (naive UTC) stands for the clock, for tests. Returns the counts of outcomes."""
        totals = Counter()
        while stop is None or not stop.is_set():
            counts = self.run_batch(now or utcnow())
            totals.update(counts)
            if not counts:
                break
        return totals

    def run_batch(self, now):
        token = secrets.token_hex(16)
        with self.engine.connect() as db:
            dropped, deliveries = self.claim(db, token, now)
        counts = Counter(dropped=dropped) if dropped else Counter()
        if not deliveries:
            return counts
        deadline = time.monotonic() + LEASE.total_seconds() / 2
        outcomes = list(self.pool.map(lambda delivery: self.push(delivery, now, deadline), deliveries))
        counts.update(self.record(token, deliveries, outcomes, now))
        return counts

    def claim(self, db, token, now):
        """(deliveries dropped as stale, deliveries claimed for this batch)."""
        batch = self.settings.batch_size
        with transaction(db):
            stale, retries = [], []
            for row in db.execute(_RETRIES_DUE, {"now": now, "batch": batch}):
                current = reminder_time(row.remind_at, row.due_date, self.settings.lead)
                if row.completed or current != row.claimed_for or row.subscriber != row.user_id:
                    stale.append(row.id)
                else:
                    retries.append(row.id)
            if stale:
                db.execute(_DROP, {"ids": stale})
            lease_until = now + LEASE
            claimed = list(retries)
            if retries:
                db.execute(_CLAIM, {"ids": retries, "token": token, "lease_until": lease_until})
            if len(retries) < batch:
                claimed += self.claim_new(db, token, now, lease_until, batch - len(retries))
            deliveries = db.execute(_CLAIMED, {"ids": claimed}).all() if claimed else []
        return len(stale), deliveries

    def claim_new(self, db, token, now, lease_until, limit):
        """Deliveries for up to `limit` tasks whose reminder has come due, claimed; returns their ids."""
        tasks = db.execute(_TASKS_DUE, {"now": now, "due_by": now + self.settings.lead, "batch": limit}).all()
        if not tasks:
            return []
        subscriptions = {}
        for row in db.execute(_SUBSCRIPTIONS_OF, {"users": sorted({row.user_id for row in tasks})}):
            subscriptions.setdefault(row.user_id, []).append(row.id)
        rows = [
            {
                "task_id": row.id,
                "subscription_id": subscription_id,
                "remind_at": reminder_time(row.remind_at, row.due_date, self.settings.lead),
                "attempts": 0,
                "next_attempt_at": lease_until,
                "claim_token": token,
            }
            for row in tasks
            for subscription_id in subscriptions.get(row.user_id, ())
        ]
        db.execute(_MARK_SENT, {"ids": [row.id for row in tasks], "now": now})
        if not rows:
            return []
        return db.execute(_new_deliveries(db.dialect.name), rows).scalars().all()

    def push(self, delivery, now, deadline):
        if time.monotonic() > deadline:
            return None  # the lease is running out: given back, pushed by a later batch
        return self.sender.send(
            delivery.endpoint, delivery.p256dh, delivery.auth, payload(delivery, now), topic=f"task-{delivery.task_id}"
        )

    def record(self, token, deliveries, outcomes, now):
        """Write the outcomes down; retried across a database restart, since the pushes were made."""
        plan = OutcomePlan(deliveries, outcomes, now)
        for wait in RECORD_ATTEMPTS:
            time.sleep(wait)
            try:
                with self.engine.connect() as db, transaction(db):
                    plan.write(db, token)
                break
            except DBAPIError as error:
                log.error("recording reminder outcomes failed: %s", type(error.orig or error).__name__)
                if wait == RECORD_ATTEMPTS[-1]:
                    raise
        plan.log()
        return plan.counts


class OutcomePlan:
    """What a batch's outcomes do to the database: deliveries finished (pushed, or never to be), subscriptions
    gone, deliveries to try again later (`deferred` ones, never started, at once)."""

    def __init__(self, deliveries, outcomes, now):
        self.finished, self.gone, self.reschedule, self.failed = [], set(), [], []
        self.counts, self.problems = Counter(), Counter()
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            self.add(delivery, outcome, now)
        self.counts = +self.counts

    def add(self, delivery, outcome, now):
        if outcome is None:
            self.counts["deferred"] += 1
            self.retry_at(delivery, delivery.attempts, now)
            return
        if outcome.kind == "delivered":
            self.counts["delivered"] += 1
            self.finished.append(delivery.id)
            return
        self.problems[outcome.status] += 1
        self.failed.append(delivery.task_id)
        if outcome.kind == "gone":
            self.counts["gone"] += 1
            self.gone.add(delivery.subscription_id)
        elif outcome.kind == "retry" and delivery.attempts + 1 < MAX_ATTEMPTS:
            self.counts["retry"] += 1
            delay = backoff_seconds(delivery.attempts + 1, outcome.retry_after)
            self.retry_at(delivery, delivery.attempts + 1, now + timedelta(seconds=delay))
        else:
            self.counts["given_up" if outcome.kind == "retry" else "rejected"] += 1
            log.warning("reminder of task %d not pushed to a subscription: %s", delivery.task_id, outcome.status)
            self.finished.append(delivery.id)

    def retry_at(self, delivery, attempts, moment):
        self.reschedule.append({"delivery_id": delivery.id, "attempts": attempts, "at": moment})

    def write(self, db, token):
        if self.finished:
            db.execute(_FINISHED, {"ids": self.finished, "token": token})
        if self.gone:
            db.execute(_GONE, {"ids": sorted(self.gone)})
        if self.reschedule:
            db.execute(_RESCHEDULE, [{**row, "token": token} for row in self.reschedule])

    def log(self):
        if self.problems:
            log.info(
                "push outcomes other than delivered: %s; tasks %s",
                ", ".join(f"{status} x{count}" for status, count in sorted(self.problems.items())),
                ", ".join(str(task_id) for task_id in self.failed[:20]) + (" ..." if len(self.failed) > 20 else ""),
            )


def describe(counts):
    keys = ("delivered", "retry", "gone", "rejected", "given_up", "dropped", "deferred")
    return ", ".join(f"{counts[key]} {key}" for key in keys)


def run_forever(worker, poll_seconds, stop):
    """Pass after pass, `poll_seconds` apart, until `stop` is set; a failed pass is logged and the next one
    comes as usual (the database may be restarting)."""
    while not stop.is_set():
        try:
            counts = worker.run_pass(stop)
            if counts:
                log.info("reminder pass: %s", describe(counts))
        except DBAPIError as error:
            log.error("reminder pass failed: %s", type(error.orig or error).__name__)
        except Exception as error:  # noqa: BLE001 - the worker outlives any one pass
            # The frames but not the message: an exception's text may carry a URL or a value.
            log.error(
                "reminder pass failed: %s\n%s", type(error).__name__, "".join(traceback.format_tb(error.__traceback__))
            )
        stop.wait(poll_seconds)
