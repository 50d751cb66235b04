"""What one user's requests may hold of a worker process at once: waited for, never refused at once.

- Places per user (`RATELIMIT_CONCURRENT_PER_USER`, 3): a user's `/api`
  requests running at once in this worker. One more waits for a place, in the
  order they came, up to `RATELIMIT_WAIT_SECONDS` (5); one that waited that long
  answers 429 with `Retry-After: 1` and changes nothing. A place is taken right
  after authentication and the rate limits, and given back when the request
  ends, whatever its outcome. So a client's burst (50 toggles at once) is
  served a few at a time, and however many requests one user sends, they hold
  no more than that many of the worker's database connections.
- The heavy slot: a page of tasks whose body will be large (`HEAVY_PAGE_BYTES`
  or more, by the size of its rows) is made one at a time per worker: its rows
  fetched and parsed, the page built and serialized. Others wait for it, up to
  `RATELIMIT_WAIT_SECONDS`, then answer 503 with `Retry-After: 1`. A page is
  known to be large once its rows are in, so the first large page of a user
  takes the slot then; the user's pages for the next minute take it before
  their statement is sent. Making a 1 MB page is CPU work nothing interrupts
  (under gevent it holds the whole worker), and a 10 MB fetch is the
  database's too: one at a time, everyone else's small requests run between
  two such pages instead of behind all of them.

Both are per worker process, on `threading` primitives: under gevent (with
its monkey-patching) a wait is a greenlet's, costing nothing of the worker.
"""

import threading
import time

from flask import current_app, g
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from todo_api.db.connections import release_db

# A page whose rows come to this many bytes or more takes the heavy slot. The victim's list of 20 tasks in the cost
# drill is about 10 KB; a page of 1,000 tasks of a few hundred bytes each is several hundred KB.
HEAVY_PAGE_BYTES = 64 * 1024
# What a task's fields other than title, description and tags take in its JSON, at most (keys, id, user id, dates,
# category, priority, recurrence, flags): the estimate's allowance per row.
TASK_OVERHEAD_BYTES = 600
# What one tag takes in the JSON besides its characters (quotes and a comma).
TAG_OVERHEAD_BYTES = 3
# A user whose page was large within this many seconds has their next pages made in the heavy slot from the start.
LARGE_PAGES_REMEMBERED_SECONDS = 60
# Users remembered so, past which those not seen within LARGE_PAGES_REMEMBERED_SECONDS are forgotten.
LARGE_PAGES_SWEPT_FROM = 10_000


class TooManyInProgress(TooManyRequests):
    def __init__(self, places, waited):
        super().__init__(
            f"Too many requests in progress: at most {places} at once per user, and none ended within {waited:g} s",
            retry_after=1,
        )


class HeavyWorkBusy(ServiceUnavailable):
    def __init__(self):
        super().__init__("The service is busy with large pages; try again", retry_after=1)


class Place:
    """One user's places: a semaphore, and how many requests hold or wait for one of them."""

    __slots__ = ("semaphore", "users")

    def __init__(self, places):
        self.semaphore = threading.Semaphore(places)
        self.users = 0


class UserPlaces:
    """Up to `places` requests of each user in progress in this process; more wait up to `wait_seconds`."""

    def __init__(self, places, wait_seconds):
        self.places = places
        self.wait_seconds = wait_seconds
        self.lock = threading.Lock()
        self.held = {}  # user id -> Place, while any request of theirs holds or waits for one

    def enter(self, user_id, before_waiting=None):
        """Take one of `user_id`'s places, waiting for one if need be (calling `before_waiting()` first); False,
        holding nothing, if none came."""
        with self.lock:
            place = self.held.get(user_id)
            if place is None:
                place = self.held[user_id] = Place(self.places)
            place.users += 1
        if place.semaphore.acquire(blocking=False):
            return True
        if before_waiting is not None:
            before_waiting()
        if place.semaphore.acquire(timeout=self.wait_seconds):
            return True
        self.forget(user_id, place)
        return False

    def leave(self, user_id):
        place = self.held[user_id]
        place.semaphore.release()
        self.forget(user_id, place)

    def forget(self, user_id, place):
        with self.lock:
            place.users -= 1
            if not place.users:
                del self.held[user_id]


class HeavyWork:
    """This process's heavy slot: one large page at a time; others wait up to `wait_seconds`, then 503.

    It remembers whose pages were large, for LARGE_PAGES_REMEMBERED_SECONDS:
    their next pages take the slot before their statement runs, so that the
    database's work and the parsing of the rows they fetch are in it too.
    """

    def __init__(self, wait_seconds):
        self.wait_seconds = wait_seconds
        self.slot = threading.Semaphore(1)
        self.large_pages = {}  # user id -> when a page of theirs last turned out large (time.monotonic())

    def acquire(self):
        if not self.slot.acquire(timeout=self.wait_seconds):
            raise HeavyWorkBusy()

    def release(self):
        self.slot.release()

    def pages_are_large(self, user_id):
        seen = self.large_pages.get(user_id)
        return seen is not None and time.monotonic() - seen < LARGE_PAGES_REMEMBERED_SECONDS

    def remember(self, user_id):
        now = time.monotonic()
        if len(self.large_pages) >= LARGE_PAGES_SWEPT_FROM:
            self.large_pages = {
                user: seen for user, seen in self.large_pages.items() if now - seen < LARGE_PAGES_REMEMBERED_SECONDS
            }
        self.large_pages[user_id] = now


class PageWork:
    """The work of one page of `user_id`'s tasks, in the heavy slot if the page is large: from the start when the
    user's pages were large lately, else from the moment its rows turn out large (`fetched`)."""

    def __init__(self, heavy, user_id):
        self.heavy, self.user_id, self.held = heavy, user_id, False

    def __enter__(self):
        if self.heavy.pages_are_large(self.user_id):
            self.take()
        return self

    def fetched(self, rows):
        if is_large(rows):
            self.heavy.remember(self.user_id)
            if not self.held:
                self.take()

    def take(self):
        self.heavy.acquire()
        self.held = True

    def __exit__(self, *_exc):
        if self.held:
            self.heavy.release()


def is_large(rows):
    """Whether `rows` (task rows) make a page of HEAVY_PAGE_BYTES or more: their texts, and an allowance for
    everything else, added up until the bound is reached (a few dozen rows at most)."""
    size = 0
    for row in rows:
        size += TASK_OVERHEAD_BYTES + len(row.title) + len(row.description or "")
        for tag in row.tags or ():
            size += len(tag) + TAG_OVERHEAD_BYTES
        if size >= HEAVY_PAGE_BYTES:
            return True
    return False


USER_PLACES = "todo_api.user_places"
HEAVY_WORK = "todo_api.heavy_work"


def get_user_places(app=None):
    """The app's places per user (None when the bound is off)."""
    return (app or current_app).extensions[USER_PLACES]


def get_heavy_work(app=None):
    """The app's heavy slot."""
    return (app or current_app).extensions[HEAVY_WORK]


def take_user_place(user_id):
    """Take a place of the caller's, waiting for one; 429 if none came in time.

    A request that has to wait gives its database connection back first (its
    session lookup took one): waiting requests hold none, so the pool always
    has connections for the requests holding places.
    """
    places = current_app.extensions[USER_PLACES]
    if places is None or not user_id:
        return
    if not places.enter(user_id, before_waiting=release_db):
        raise TooManyInProgress(places.places, places.wait_seconds)
    g.user_place = user_id


def give_place_back(_exc=None):
    user_id = g.pop("user_place", None)
    if user_id is not None:
        get_user_places().leave(user_id)


def page_work(user_id):
    """`with page_work(user_id) as work:` fetch a page's rows, call `work.fetched(rows)`, build the page."""
    return PageWork(get_heavy_work(), user_id)


def init_app(app):
    config = app.config
    wait_seconds = config["RATELIMIT_WAIT_SECONDS"]
    app.extensions[HEAVY_WORK] = HeavyWork(wait_seconds)
    app.extensions[USER_PLACES] = None
    if config["RATELIMIT_ENABLED"] and config["RATELIMIT_CONCURRENT_PER_USER"]:
        app.extensions[USER_PLACES] = UserPlaces(config["RATELIMIT_CONCURRENT_PER_USER"], wait_seconds)
        app.teardown_request(give_place_back)
