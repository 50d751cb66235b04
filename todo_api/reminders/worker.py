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
   one `push_delivery` row per subscription of the task's user (the
   PUSH_SUBSCRIPTIONS_PER_USER most recently refreshed, should there be more),
   and `reminder_sent` set, together. Claimed rows carry this batch's token and
   `next_attempt_at` = now + LEASE: a worker that dies leaves them to be
   claimed again when the lease ends. On Postgres the rows are selected `FOR
   UPDATE SKIP LOCKED`, so concurrent workers, on any number of machines, never
   claim the same row and never wait for each other; on SQLite the claim
   transaction holds the database's write lock. A pass gives each user at most
   REMINDER_PUSHES_PER_USER pushes (`PassBudget`); the rest of that user's
   reminders wait for the next pass, so one user's subscriptions bound the
   connections a pass opens.
2. Push each claimed delivery, REMINDER_PUSH_THREADS at a time, users taking
   turns, encrypted and VAPID-signed (`delivery`), each within its own total
   deadline of PUSH_TIMEOUT_SECONDS, to public addresses only (`outbound`).
   Whatever goes wrong with one push, making its message included, is that
   push's outcome (`Worker.push` never raises), never the batch's.
3. Record each outcome as soon as it is known (those known together in one
   short transaction), without waiting for the rest of the batch: a delivery
   the push service took is deleted; a subscription answered 404 or 410 is
   deleted (and its deliveries with it); a 429, a 5xx, no connection or a
   timeout is retried in a later pass, after the service's Retry-After or an
   exponential backoff, never by waiting here, so one slow push service holds
   up nobody else; any other answer, a message that cannot be made, an
   endpoint that breaks today's rules and a host that leads to no public
   address drop the delivery.

Stopping (`stop` set: SIGTERM): no more batches are claimed and no more pushes
started; the pushes in flight have STOP_GRACE_SECONDS to be answered, then
their connections are cut (an answer not had is a `retry`); their outcomes are
recorded, and the deliveries of the batch not yet pushed are given back, to be
pushed by the next pass, of this worker or another. A worker thus exits some
3 seconds after the signal (a push still connecting, or resolving its host,
keeps its own deadline, PUSH_TIMEOUT_SECONDS), plus the time a record takes.

A reminder is thus pushed once to each subscription. A push is repeated only
when the outcome of a push that was made cannot be recorded (the database is
gone for longer than RECORD_ATTEMPTS cover, or the worker is killed between
push and record), or when the push service took a push and answered too late:
the lease then ends, or the timeout is retried, and the delivery is pushed again.

Logs carry task ids and counts, never an endpoint, a key or a token.
"""

import functools
import itertools
import logging
import secrets
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import DateTime, and_, bindparam, delete, exists, not_, or_, select, update
from sqlalchemy.exc import DBAPIError

from todo_api.db.connections import get_engine, transaction
from todo_api.db.tables import next_version, push_delivery, push_subscription, task, user_settings
from todo_api.db.upsert import DIALECT_INSERTS
from todo_api.reminders.push import Outcome, PushSender, signer_from_config
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
# A stopping worker gives the pushes in flight this long to be answered, then cuts their connections; it looks
# for the signal this often while pushes are in flight.
STOP_GRACE_SECONDS = 3
STOP_CHECK_SECONDS = 0.25
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
    "Due Fri 28 Nov 17:00"), or "Reminder" for a task without a due date. A due time whose wall clock in the
    zone is past the calendar's end (late in the year 9999, east of UTC) is shown in UTC, and says so."""
    if due_date is None:
        return "Reminder"
    try:
        return due_text(utc_to_local(due_date, zone), utc_to_local(now, zone).date())
    except OverflowError:
        return due_text(due_date, now.date()) + " UTC"


def due_text(local, today):
    clock = f"{local:%H:%M}"
    day = local.date()
    days_ahead = (day - today).days
    if days_ahead == 0:
        return f"Due {clock}"
    if days_ahead == 1:
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
    .where(
        push_delivery.c.next_attempt_at <= bindparam("now", type_=DateTime),
        push_subscription.c.user_id.not_in(bindparam("exhausted", expanding=True)),
    )
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
        task.c.user_id.not_in(bindparam("exhausted", expanding=True)),
    )
    .limit(bindparam("batch"))
    .with_for_update(of=task, skip_locked=True)
)
# The subscriptions cannot be deleted under the claim (a foreign key will point at them). Each user's most
# recently refreshed first: those are the ones kept when there are more than PUSH_SUBSCRIPTIONS_PER_USER.
_SUBSCRIPTIONS_OF = (
    select(push_subscription.c.id, push_subscription.c.user_id)
    .where(push_subscription.c.user_id.in_(bindparam("users", expanding=True)))
    .order_by(push_subscription.c.user_id, push_subscription.c.updated_at.desc(), push_subscription.c.id.desc())
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
        task.c.user_id,
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
    pushes_per_user: int = 50
    subscriptions_per_user: int = 10
    allow_insecure: bool = False

    @classmethod
    def from_config(cls, config):
        return cls(
            lead=timedelta(minutes=config["REMINDER_LEAD_MINUTES"]),
            batch_size=config["REMINDER_BATCH_SIZE"],
            threads=config["REMINDER_PUSH_THREADS"],
            timeout=config["PUSH_TIMEOUT_SECONDS"],
            pushes_per_user=config["REMINDER_PUSHES_PER_USER"],
            subscriptions_per_user=config["PUSH_SUBSCRIPTIONS_PER_USER"],
            allow_insecure=config["PUSH_ALLOW_INSECURE_ENDPOINTS"],
        )


class PassBudget:
    """The pushes each user may still be given in this pass: `limit`, except that a user's first reminder of a
    pass always goes, to all of the user's subscriptions. A user who has had what the budget allows is
    `exhausted`: the claims of this pass leave that user's reminders for the next pass."""

    def __init__(self, limit):
        self.limit = limit
        self.used = Counter()
        self.exhausted = set()

    def take(self, user_id, pushes):
        """True, and counted, if `pushes` more pushes for the user fit in the budget."""
        used = self.used[user_id]
        if used and used + pushes > self.limit:
            self.exhausted.add(user_id)
            return False
        self.used[user_id] = used + pushes
        if self.used[user_id] >= self.limit:
            self.exhausted.add(user_id)
        return True


@dataclass
class Claim:
    dropped: int  # deliveries dropped as stale
    deliveries: list  # claimed for this batch
    held_back: int  # due, and left for the next pass by the budget


class Worker:
    """Pushes due reminders; `run_pass()` does everything that is due now."""

    def __init__(self, engine, settings, signer, sender=None):
        self.engine = engine
        self.settings = settings
        self.sender = sender or PushSender(signer, settings.timeout, settings.allow_insecure)
        self.pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="push")

    @classmethod
    def from_app(cls, app, sender=None):
        return cls(get_engine(app), Settings.from_config(app.config), signer_from_config(app.config), sender)

    def close(self):
        self.pool.shutdown(cancel_futures=True)

    def run_pass(self, stop=None, now=None):
        """Claim, push and record batch after batch until nothing is due, or `stop` is set (then the pushes in
        flight end, within STOP_GRACE_SECONDS, and those not started are given back). `now` (naive UTC) stands
        for the clock, for tests. Returns the counts of outcomes."""
        stop = stop or threading.Event()
        budget = PassBudget(self.settings.pushes_per_user)
        totals = Counter()
        while not stop.is_set():
            counts, claimed = self.run_batch(now or utcnow(), stop, budget)
            totals.update(counts)
            if not claimed:
                break
        return +totals

    def run_batch(self, now, stop, budget):
        """One batch: (its counts, whether it claimed or held back anything, so that another may follow)."""
        token = secrets.token_hex(16)
        with self.engine.connect() as db:
            claim = self.claim(db, token, now, budget)
        counts = Counter(dropped=claim.dropped)
        if claim.deliveries:
            counts.update(self.push_all(token, claim.deliveries, now, stop))
        return counts, bool(claim.dropped or claim.deliveries or claim.held_back)

    def claim(self, db, token, now, budget=None):
        """Stale deliveries dropped, and deliveries claimed for this batch, within the pass's budget."""
        budget = budget or PassBudget(self.settings.pushes_per_user)
        batch = self.settings.batch_size
        with transaction(db):
            stale, retries, held_back = [], [], 0
            params = {"now": now, "batch": batch, "exhausted": sorted(budget.exhausted)}
            for row in db.execute(_RETRIES_DUE, params):
                current = reminder_time(row.remind_at, row.due_date, self.settings.lead)
                if row.completed or current != row.claimed_for or row.subscriber != row.user_id:
                    stale.append(row.id)
                elif budget.take(row.subscriber, 1):
                    retries.append(row.id)
                else:
                    held_back += 1
            if stale:
                db.execute(_DROP, {"ids": stale})
            lease_until = now + LEASE
            claimed = list(retries)
            if retries:
                db.execute(_CLAIM, {"ids": retries, "token": token, "lease_until": lease_until})
            if len(retries) < batch:
                new, held = self.claim_new(db, token, now, lease_until, batch - len(retries), budget)
                claimed += new
                held_back += held
            deliveries = db.execute(_CLAIMED, {"ids": claimed}).all() if claimed else []
        return Claim(len(stale), deliveries, held_back)

    def claim_new(self, db, token, now, lease_until, limit, budget):
        """Deliveries for up to `limit` tasks whose reminder has come due, to the user's most recently refreshed
        subscriptions (PUSH_SUBSCRIPTIONS_PER_USER of them, should there be more), within the budget; returns
        their ids, and how many tasks the budget held back."""
        params = {"now": now, "due_by": now + self.settings.lead, "batch": limit, "exhausted": sorted(budget.exhausted)}
        tasks = db.execute(_TASKS_DUE, params).all()
        if not tasks:
            return [], 0
        subscriptions = {}
        for row in db.execute(_SUBSCRIPTIONS_OF, {"users": sorted({row.user_id for row in tasks})}):
            kept = subscriptions.setdefault(row.user_id, [])
            if len(kept) < self.settings.subscriptions_per_user:
                kept.append(row.id)
        claimed = [row for row in tasks if budget.take(row.user_id, len(subscriptions.get(row.user_id, ())))]
        rows = [
            {
                "task_id": row.id,
                "subscription_id": subscription_id,
                "remind_at": reminder_time(row.remind_at, row.due_date, self.settings.lead),
                "attempts": 0,
                "next_attempt_at": lease_until,
                "claim_token": token,
            }
            for row in claimed
            for subscription_id in subscriptions.get(row.user_id, ())
        ]
        if claimed:
            db.execute(_MARK_SENT, {"ids": [row.id for row in claimed], "now": now})
        if not rows:
            return [], len(tasks) - len(claimed)
        return db.execute(_new_deliveries(db.dialect.name), rows).scalars().all(), len(tasks) - len(claimed)

    def push_all(self, token, deliveries, now, stop):
        """Push the batch's deliveries, REMINDER_PUSH_THREADS at a time, users taking turns; record each outcome
        as soon as it is known. Returns the counts of outcomes."""
        lease_deadline = time.monotonic() + LEASE.total_seconds() / 2
        abandoned = threading.Event()
        futures = {
            self.pool.submit(self.push, delivery, now, lease_deadline, stop, abandoned): delivery
            for delivery in users_taking_turns(deliveries)
        }
        counts = Counter()
        pending = set(futures)
        cut_at = None
        try:
            while pending:
                done, pending = wait(pending, timeout=STOP_CHECK_SECONDS, return_when=FIRST_COMPLETED)
                if done:
                    counts.update(self.record(token, [(futures[future], future.result()) for future in done], now))
                if stop.is_set() and pending:
                    cut_at = cut_at or time.monotonic() + STOP_GRACE_SECONDS
                    if time.monotonic() >= cut_at:
                        self.sender.cut_in_flight()
        except BaseException:
            # The outcomes cannot be recorded: no more pushes. Those made are pushed again when the lease ends.
            abandoned.set()
            raise
        return counts

    def push(self, delivery, now, lease_deadline, stop, abandoned):
        """One delivery's outcome (an Outcome, or None for one given back unpushed); never raises."""
        if stop.is_set() or abandoned.is_set() or time.monotonic() > lease_deadline:
            return None  # given back, pushed by a later batch
        try:
            message = payload(delivery, now)
        except Exception as error:  # noqa: BLE001 - a message that cannot be made is this push's outcome
            return Outcome("rejected", type(error).__name__)
        try:
            return self.sender.send(
                delivery.endpoint, delivery.p256dh, delivery.auth, message, topic=f"task-{delivery.task_id}"
            )
        except Exception as error:  # noqa: BLE001 - the sender returns its outcomes; this is for its flaws
            return Outcome("retry", type(error).__name__)

    def record(self, token, finished, now):
        """Write down the outcomes of `finished` (delivery, outcome) pairs; retried across a database restart,
        since the pushes were made."""
        plan = OutcomePlan(finished, now)
        for wait_seconds in RECORD_ATTEMPTS:
            time.sleep(wait_seconds)
            try:
                with self.engine.connect() as db, transaction(db):
                    plan.write(db, token)
                break
            except DBAPIError as error:
                log.error("recording reminder outcomes failed: %s", type(error.orig or error).__name__)
                if wait_seconds == RECORD_ATTEMPTS[-1]:
                    raise
        plan.log()
        return plan.counts


def users_taking_turns(deliveries):
    """The deliveries reordered so that users take turns: each user's first, then each user's second, ..."""
    by_user = {}
    for delivery in deliveries:
        by_user.setdefault(delivery.user_id, []).append(delivery)
    turns = itertools.zip_longest(*by_user.values())
    return [delivery for turn in turns for delivery in turn if delivery is not None]


class OutcomePlan:
    """What a batch's outcomes do to the database: deliveries finished (pushed, or never to be), subscriptions
    gone, deliveries to try again later (`deferred` ones, never started, at once)."""

    def __init__(self, finished, now):
        self.finished, self.gone, self.reschedule, self.failed = [], set(), [], []
        self.counts, self.problems = Counter(), Counter()
        for delivery, outcome in finished:
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
