"""How `GET /api/tasks` scales with the size of one user's list.

On a throwaway Postgres database (created, migrated, dropped at the end), one
user is given 100, 1,000, 10,000 and 100,000 tasks in turn (other users hold as
many again), and each list scenario is timed through the real Flask app
in-process: first page, a page from the middle of the list, a filter, two
searches (a word in about 1% of the rows and a word in five rows) and the
unlimited listing, the frontend's `GET /api/tasks`, which answers every task up
to 1,000 (all of them at 1,000 tasks).

Goals checked at the end: the first and the deep page stay within 2x from the
smallest to the largest size, and a search over 100,000 tasks takes under 50 ms.

Usage:
    .venv/bin/python bench/scale.py [--sizes 100,1000,10000,100000] [--repeat 50]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

from sqlalchemy import text
from sqlalchemy.dialects import postgresql

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # the tests' support: a throwaway database

from support import throwaway_database  # noqa: E402
from todo_api import create_app  # noqa: E402
from todo_api.cli import create_user_session  # noqa: E402
from todo_api.db.connections import get_engine, transaction  # noqa: E402
from todo_api.db.migrate import create_schema  # noqa: E402
from todo_api.tasks import listing  # noqa: E402
from todo_api.tasks.schemas import list_query_schema  # noqa: E402

COMMON_WORD = "quarterly"  # in the title of every 100th task
RARE_WORD = "zeppelin"  # in the description of five tasks of each user
WARMUPS = 5

FILL = text(
    """
    WITH words AS (
        SELECT ARRAY['review', 'write', 'call', 'fix', 'plan', 'book', 'clean', 'send', 'update', 'prepare',
                     'order', 'renew', 'check', 'organise', 'pay', 'schedule', 'draft', 'sort', 'test', 'buy']
                   AS verbs,
               ARRAY['report', 'budget', 'garden', 'kitchen', 'dentist', 'invoice', 'slides', 'car', 'passport',
                     'newsletter', 'roadmap', 'groceries', 'backup', 'contract', 'birthday', 'flight', 'laptop',
                     'meeting', 'taxes', 'website', 'bicycle', 'insurance', 'library', 'presentation']
                   AS nouns,
               ARRAY['new', 'old', 'weekly', 'urgent', 'shared', 'family', 'team', 'annual', 'small', 'final']
                   AS adjectives
    ), rows AS (
        SELECT g, timestamp '2025-06-01' - random() * interval '730 days' AS created,
               verbs[1 + floor(random() * 20)::int] AS verb, adjectives[1 + floor(random() * 10)::int] AS adjective,
               nouns[1 + floor(random() * 24)::int] AS noun, nouns[1 + floor(random() * 24)::int] AS other_noun,
               verbs[1 + floor(random() * 20)::int] AS other_verb, random() AS r
        FROM words, generate_series(1, :n) AS g
    )
    INSERT INTO task (user_id, title, description, completed, priority, category, tags,
                      created_at, updated_at, due_date, reminder_sent)
    SELECT CASE WHEN :others THEN 'other-user-' || (g % 19) ELSE :user_id END,
           initcap(verb) || ' the ' || adjective || ' ' || noun || CASE WHEN g % 100 = 50 THEN ' (:common)' ELSE '' END,
           CASE WHEN g % 10 = 0 THEN NULL
                ELSE 'Remember to ' || other_verb || ' the ' || other_noun || ' first, then ' || verb || ' the '
                     || noun || '.' || CASE WHEN g % greatest(:n / 5, 1) = 3 THEN ' Ask about the :rare.' ELSE '' END
           END,
           r < 0.3,
           (ARRAY['low', 'medium', 'high'])[1 + floor(random() * 3)::int]::taskpriority,
           (ARRAY[NULL, 'work', 'home', 'errands', 'health', 'finance'])[1 + (g % 6)],
           (ARRAY['[]', '["work"]', '["home", "weekend"]', '["urgent"]', '["work", "urgent", "q3"]'])
               [1 + (g % 5)]::json,
           created, created + r * interval '20 days',
           CASE WHEN r < 0.4 THEN NULL ELSE created + random() * interval '60 days' END,
           false
    FROM rows
""".replace(":common", COMMON_WORD).replace(":rare", RARE_WORD)
)


MATCHES = text("SELECT count(*) FROM task WHERE user_id = :u AND (title ILIKE :p OR description ILIKE :p)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000", help="task counts (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=50, help="timed requests per scenario (default: %(default)s)")
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database used only to create and drop the throwaway one",
    )
    args = parser.parse_args()
    args.sizes = sorted(int(size.replace("_", "")) for size in args.sizes.split(","))
    return args


def fill(connection, user_id, size):
    connection.execution_options(statement_timeout_ms=0)  # the app's timeout is for requests, not bulk loads
    connection.execute(text("TRUNCATE task RESTART IDENTITY CASCADE"))
    connection.execute(text("SELECT setseed(0.42)"))
    connection.execute(FILL, {"n": size, "others": False, "user_id": user_id})
    connection.execute(FILL, {"n": size, "others": True, "user_id": user_id})
    # Straight to the driver: VACUUM cannot run inside the transaction that a statement with its timeout makes.
    with connection.connection.dbapi_connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE task")


def middle_cursor(app, connection, user_id, size):
    """The cursor the page ending at the middle row would hand out (newest first)."""
    row = connection.execute(
        text("SELECT id, created_at FROM task WHERE user_id = :u ORDER BY created_at DESC, id DESC OFFSET :k LIMIT 1"),
        {"u": user_id, "k": size // 2 - 1},
    ).one()
    return listing.get_cursors(app).dump("created_at", True, row)


def timed(client, headers, url, repeat):
    """Median and p95 in ms of `repeat` requests after a few warm-ups; and the rows of one answer."""
    for _ in range(WARMUPS):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.status_code, response.get_data(as_text=True)[:300])
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        client.get(url, headers=headers)
        samples.append((time.perf_counter() - start) * 1000)
    p95 = statistics.quantiles(samples, n=20, method="inclusive")[-1] if repeat > 1 else samples[0]
    return statistics.median(samples), p95, len(response.get_json()["data"])


def explain_search(app, connection, user_id, word):
    query = dataclasses.replace(list_query_schema.load({}), q=word, limit=50)
    statement = listing.list_statement(user_id, query, "postgresql", listing.get_cursors(app))
    sql = statement.compile(dialect=postgresql.dialect(paramstyle="named"), compile_kwargs={"literal_binds": True})
    with transaction(connection, setting=(listing.SEARCH_SETTING, listing.LITERAL_REGEX + word)):  # as the app does
        plan = connection.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")).scalars().all()
    uses_trgm = any("_trgm" in line for line in plan)
    print(f"\nEXPLAIN ANALYZE, search q={word!r}: pg_trgm index {'USED' if uses_trgm else 'NOT used'}")
    for line in plan:
        if "->" in line or line is plan[0] or "Execution Time" in line or "Filter" in line or "Cond" in line:
            print("   ", line.split("  (cost")[0].rstrip())


def run(url, args):
    app = create_app({"DATABASE_URL": url, "LOG_LEVEL": "WARNING", "SECRET_KEY": "scale-secret-0123456789abcdef"})
    engine = get_engine(app)
    try:
        create_schema(engine, app.config, with_auth_tables=True)
        with engine.begin() as connection:
            token = create_user_session(connection, app.config, "scale@example.com")
            user_id = connection.execute(text('SELECT "userId" FROM "session" WHERE token = :t'), {"t": token}).scalar()
        headers = {"Authorization": f"Bearer {token}"}
        client = app.test_client()
        results = {}
        with engine.connect() as connection:
            for size in args.sizes:
                started = time.perf_counter()
                fill(connection, user_id, size)
                counts = [
                    connection.execute(MATCHES, {"u": user_id, "p": f"%{word}%"}).scalar()
                    for word in (COMMON_WORD, RARE_WORD)
                ]
                print(
                    f"filled {size:,} tasks (+{size:,} of other users) in {time.perf_counter() - started:.1f} s; "
                    f"'{COMMON_WORD}' in {counts[0]} of them, '{RARE_WORD}' in {counts[1]}",
                    flush=True,
                )
                middle = middle_cursor(app, connection, user_id, size)
                scenarios = {
                    "first page (limit=50)": "/api/tasks?limit=50",
                    "deep page (middle, limit=50)": f"/api/tasks?limit=50&cursor={middle}",
                    "filter pending+high": "/api/tasks?status=pending&priority=high&limit=50",
                    f"search ~1% ({COMMON_WORD})": f"/api/tasks?q={COMMON_WORD}&limit=50",
                    f"search rare ({RARE_WORD})": f"/api/tasks?q={RARE_WORD}&limit=50",
                    "unlimited (all, at most 1,000 rows)": "/api/tasks",
                }
                results[size] = {name: timed(client, headers, path, args.repeat) for name, path in scenarios.items()}
            report(results, args.sizes)
            explain_search(app, connection, user_id, COMMON_WORD)
            explain_search(app, connection, user_id, RARE_WORD)
    finally:
        engine.dispose()


def report(results, sizes):
    names = list(results[sizes[0]])
    print("\nmedian / p95 in ms (rows returned)")
    print(f"{'scenario':<30}" + "".join(f"{size:>24,}" for size in sizes))
    for name in names:
        cells = "".join(f"{f'{m:.1f} / {p:.1f} ({n})':>24}" for m, p, n in (results[s][name] for s in sizes))
        print(f"{name:<30}{cells}")
    small, large = results[sizes[0]], results[sizes[-1]]
    print()
    for name in names[:2]:
        ratio = large[name][0] / small[name][0]
        verdict = "PASS" if ratio <= 2 else "FAIL"
        print(
            f"{verdict}: {name} within 2x from {sizes[0]:,} to {sizes[-1]:,} rows: "
            f"{small[name][0]:.1f} -> {large[name][0]:.1f} ms ({ratio:.2f}x)"
        )
    for name in names[3:5]:
        median = large[name][0]
        verdict = "PASS" if median < 50 else "FAIL"
        print(f"{verdict}: {name} over {sizes[-1]:,} tasks under 50 ms: median {median:.1f} ms")


def main():
    args = parse_args()
    with throwaway_database(args.admin_url, "todo_api_scale") as url:
        run(url, args)


if __name__ == "__main__":
    main()
