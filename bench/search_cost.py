"""What the costliest keywords cost a search over one user's largest possible tasks, matcher by matcher.

On a throwaway Postgres database (created, migrated, dropped at the end), one
user per kind of text gets 1,000 tasks at the documented maximum sizes (a
255-character title, a 10,000-character description) made of one repeated
piece, with the keywords' trigrams in every task so that no index can rule a
task out. Each keyword is then timed (median of --repeat runs, in the
database, counting the matches) with:

- `ILIKE`: `title ILIKE '%word%' OR description ILIKE '%word%'`, the matcher
  before; it backtracks, up to len(word) steps per character of text;
- `strpos`: `strpos(lower(col), lower(word)) > 0`, Boyer-Moore-Horspool, whose
  worst case is also len(word) steps per character;
- `regex`: `col ~* '***=word'`, a literal regular expression, the matcher now:
  a lazy DFA, one step per character plus at most len(word) new states per row;
- `service`: the search as the service runs it (`listing.find_tasks`: the word
  in the transaction's setting, the SELECT reading it), through its own code.

Usage:
    .venv/bin/python bench/search_cost.py [--repeat 3]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time

from sqlalchemy import text, true

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # the tests' support: a throwaway database

from support import throwaway_database  # noqa: E402
from todo_api import create_app  # noqa: E402
from todo_api.auth.sessions import Caller  # noqa: E402
from todo_api.db.connections import get_engine  # noqa: E402
from todo_api.db.migrate import upgrade  # noqa: E402
from todo_api.tasks import listing  # noqa: E402
from todo_api.tasks.schemas import list_query_schema  # noqa: E402

TASKS = 1000
# user: the piece its texts repeat; each text ends in every trigram the keywords below need.
TEXTS = {"a": "a", "ab": "ab", "ä": "ä"}
BAIT = "xaabxbaaxbacabxääbxbääx"
KEYWORDS = [  # (user, keyword): the worst shapes for each matcher, at the old (200) and the new (100) bound
    ("a", "a" * 199 + "b"),
    ("a", "a" * 99 + "b"),
    ("a", "b" + "a" * 199),
    ("a", "b" + "a" * 99),
    ("ab", "ab" * 49 + "ac"),
    ("ab", "ac" + "ab" * 49),
    ("ä", "ä" * 99 + "b"),
    ("ä", "b" + "ä" * 99),
    ("a", "milk"),
]
MATCHERS = {
    "ILIKE": "title ILIKE :like OR description ILIKE :like",
    "strpos": "strpos(lower(title), lower(:word)) > 0 OR strpos(lower(description), lower(:word)) > 0",
    "regex": "title ~* :regex OR description ~* :regex",
}
FILL = text(
    """
    INSERT INTO task (user_id, title, description, completed, priority, tags, created_at, updated_at, reminder_sent)
    SELECT :user_id, :title, :description, false, 'medium', '[]', now() - g * interval '1 second', now(), false
    FROM generate_series(1, :n) AS g
"""
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per cell (default: %(default)s)")
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database used only to create and drop the throwaway one",
    )
    return parser.parse_args()


def median_ms(run, repeat):
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def timed_row(connection, cursors, user_id, word, repeat):
    """Median ms of each matcher and of the service's search for one keyword; and the match counts seen."""
    params = {"u": user_id, "word": word, "like": f"%{listing.escape_like(word)}%", "regex": "***=" + word}
    cells, counts = [], set()
    for condition in MATCHERS.values():
        statement = text(f"SELECT count(*) FROM task WHERE user_id = :u AND ({condition})")
        count = functools.partial(lambda s: connection.execute(s, params).scalar(), statement)
        counts.add(count())
        cells.append(median_ms(count, repeat))
    query = dataclasses.replace(list_query_schema.load({}), q=word, limit=50)
    # The search alone: its session check (a guard that always holds here) is an index lookup, timed elsewhere.
    caller = Caller(user_id, b"", true(), confirmed=True)
    search = functools.partial(listing.find_tasks, connection, caller, query, cursors)
    counts.add(len(search()))
    cells.append(median_ms(search, repeat))
    return cells, counts


def run(url, args):
    settings = {"DATABASE_URL": url, "LOG_LEVEL": "WARNING", "DATABASE_STATEMENT_TIMEOUT_MS": 0}
    app = create_app({**settings, "SECRET_KEY": "search-cost-secret-0123456789abcdef"})
    engine = get_engine(app)
    cursors = listing.get_cursors(app)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            for user_id, piece in TEXTS.items():
                title = (piece * 255)[: 255 - len(BAIT)] + BAIT
                description = (piece * 10_000)[: 10_000 - len(BAIT)] + BAIT
                connection.execute(FILL, {"user_id": user_id, "title": title, "description": description, "n": TASKS})
            connection.execution_options(statement_timeout_ms=0).execute(text("VACUUM ANALYZE task"))
            print(f"{TASKS:,} tasks of 255 + 10,000 characters per user; median ms of {args.repeat} runs\n")
            print(f"{'text':<5} {'keyword':<22}" + "".join(f"{name:>9}" for name in [*MATCHERS, "service"]))
            for user_id, word in KEYWORDS:
                cells, counts = timed_row(connection, cursors, user_id, word, args.repeat)
                label = f"{word[:4]}…{word[-4:]} ({len(word)})" if len(word) > 10 else word
                print(f"{TEXTS[user_id]:<5} {label:<22}" + "".join(f"{ms:>9.0f}" for ms in cells), end="")
                print("" if counts == {0} else f"   matches: {sorted(counts)}")
    finally:
        engine.dispose()


def main():
    args = parse_args()
    with throwaway_database(args.admin_url, "todo_api_search") as url:
        run(url, args)


if __name__ == "__main__":
    main()
