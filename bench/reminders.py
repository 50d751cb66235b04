"""Reminders pushed per second by one worker, to a push service on 127.0.0.1.

    .venv/bin/python bench/reminders.py [--reminders 5000] [--users 100] [--batch 100] [--threads 8]
        [--no-verify] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

On a throwaway Postgres database (dropped at the end), it inserts --users users'
push subscriptions, one each, at the tests' push service (tests/support/push_service.py),
and --reminders due reminders spread over them; then one worker (`Worker.run_pass`,
what `flask --app todo_api reminders send-due` runs) pushes them all, and the
script prints the reminders delivered per second. The push service checks each
request's VAPID token and decrypts its body, on the same cores as the worker;
with --no-verify it answers 201 without looking, which shows the worker alone.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from sqlalchemy import insert  # noqa: E402

from support import throwaway_database  # noqa: E402
from support.push_service import PushService  # noqa: E402
from todo_api import create_app  # noqa: E402
from todo_api.db.connections import get_engine  # noqa: E402
from todo_api.db.migrate import create_schema  # noqa: E402
from todo_api.db.tables import push_subscription, task  # noqa: E402
from todo_api.reminders.push import generate_vapid_keys  # noqa: E402
from todo_api.reminders.worker import Worker  # noqa: E402
from todo_api.timezones import utcnow  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reminders", type=int, default=5000, help="default: %(default)s")
    parser.add_argument("--users", type=int, default=100, help="one subscription each (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=100, help="REMINDER_BATCH_SIZE (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="REMINDER_PUSH_THREADS (default: %(default)s)")
    parser.add_argument("--no-verify", action="store_true", help="the push service only counts requests")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args()


def seed(app, service, users, reminders):
    now = utcnow()
    subscriptions = [
        {"user_id": f"user-{number}", **service.subscription(f"user-{number}"), "created_at": now, "updated_at": now}
        for number in range(users)
    ]
    tasks = [
        {
            "user_id": f"user-{number % users}",
            "title": f"Reminder {number}",
            "completed": False,
            "priority": "medium",
            "tags": [],
            "created_at": now,
            "updated_at": now,
            "remind_at": now,
            "reminder_sent": False,
        }
        for number in range(reminders)
    ]
    with get_engine(app).begin() as connection:
        connection.execute(insert(push_subscription), subscriptions)
        connection.execute(insert(task), tasks)


def main():
    args = parse_args()
    public_key, private_key = generate_vapid_keys()
    with throwaway_database(args.admin_url, "todo_api_bench") as url:
        service = PushService(public_key, verify=not args.no_verify).start()
        try:
            app = create_app(
                {
                    "DATABASE_URL": url,
                    "SECRET_KEY": "reminders-bench-secret-0123456789",
                    "VAPID_PUBLIC_KEY": public_key,
                    "VAPID_PRIVATE_KEY": private_key,
                    "VAPID_SUBJECT": "mailto:bench@example.com",
                    "PUSH_ALLOW_INSECURE_ENDPOINTS": True,
                    "REMINDER_BATCH_SIZE": args.batch,
                    "REMINDER_PUSH_THREADS": args.threads,
                    # One pass pushes them all, however many fall to one user.
                    "REMINDER_PUSHES_PER_USER": args.reminders,
                    "LOG_LEVEL": "WARNING",
                }
            )
            create_schema(get_engine(app), app.config, with_auth_tables=False)
            seed(app, service, args.users, args.reminders)
            worker = Worker.from_app(app)
            started = time.perf_counter()
            counts = worker.run_pass()
            elapsed = time.perf_counter() - started
            worker.close()
            get_engine(app).dispose()
        finally:
            service.stop()
    delivered = counts["delivered"]
    checked = "checked and decrypted" if service.verify else "counted only"
    print(
        f"{delivered} of {args.reminders} reminders delivered in {elapsed:.2f} s: {delivered / elapsed:,.0f}/s "
        f"(one worker, batch {args.batch}, {args.threads} threads; push service: {checked}, "
        f"{service.requests} requests, {len(service.failures)} failed checks)"
    )
    return 0 if delivered == args.reminders and not service.failures else 1


if __name__ == "__main__":
    sys.exit(main())
