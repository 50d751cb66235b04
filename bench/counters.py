"""What the rate-limit counters cost: instructions per /api request, and the sweep of ended windows.

`instructions`: the rate-limit work of one /api request (its address and its
user counted, the X-RateLimit-* standing of the user's limit, the response
charged to the user's budget), counted by valgrind's callgrind in a child
process, in memory and in Redis (REDIS_URL, by default the local server). Give
`--repo` another checkout to compare (one without the response budget counts
the rest).

`sweep`: CPU of counting 1,000 times a second for 4 s while K other windows
are live (K client addresses seen in the last minute), for limits' own
MemoryStorage (a thread, started again every 10 ms, walks every key) and
todo_api.ratelimit.limits.MemoryWindows (a sweep every 10 s).

Usage:
    .venv/bin/python bench/counters.py instructions [--repo PATH] [--redis-url URL]
    .venv/bin/python bench/counters.py sweep
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIGH = "1000000000 per minute"
REQUESTS = 2000
WARMUPS = 300


def child(repo, redis_url, requests):
    """WARMUPS + `requests` requests' rate-limit work, in this process."""
    sys.path[:0] = [repo]
    from todo_api import create_app
    from todo_api.ratelimit import limits as ratelimit

    settings = {
        "DATABASE_URL": "sqlite://",
        "SECRET_KEY": "counters",
        "LOG_LEVEL": "WARNING",
        "REDIS_URL": redis_url or None,
        "RATELIMIT_KEY_PREFIX": f"bench-counters-{os.getpid()}",
        "RATELIMIT_PER_USER": HIGH,
        "RATELIMIT_PER_IP": HIGH,
    }
    app = create_app(settings)
    limits = ratelimit.get_rate_limits(app)
    charges = hasattr(limits, "charge")

    def one(index):
        user = f"user:{index % 50}"
        limits.count([("ip:127.0.0.1", limits.per_ip), (user, limits.per_user)])
        if charges:
            limits.charge(user, 10_000)  # a list of 20 tasks: under the charged size

    with app.test_request_context("/api/tasks"):
        for index in range(WARMUPS + requests):
            one(index)


def instructions(repo, redis_url, requests):
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
        command += ["child", "--repo", repo, "--redis-url", redis_url, "--requests", str(requests)]
        subprocess.run(command, check=True, capture_output=True)
        with open(out) as profile:
            return int(re.search(r"^(?:summary|totals): (\d+)", profile.read(), re.MULTILINE).group(1))


def per_request(repo, redis_url):
    return (instructions(repo, redis_url, REQUESTS) - instructions(repo, redis_url, 0)) // REQUESTS


def paced(hit, seconds=4, rate=1000):
    """Process CPU (every thread) per second while `hit` runs `rate` times a second."""
    started_cpu, started = time.process_time(), time.perf_counter()
    for index in range(seconds * rate):
        hit(index)
        delay = started + (index + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return (time.process_time() - started_cpu) / seconds


def sweep():
    sys.path[:0] = [REPO]
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    from todo_api.ratelimit.limits import MemoryWindows

    item = parse(HIGH)
    alone = statistics.median(paced(lambda _index: None) for _ in range(3))
    for others in (0, 20_000, 100_000):
        for name, storage in (("limits MemoryStorage", MemoryStorage), ("MemoryWindows", MemoryWindows)):
            runs = []
            for _ in range(3):
                limiter = FixedWindowRateLimiter(storage())
                for index in range(others):
                    limiter.hit(item, f"ip:{index}")
                runs.append(paced(lambda index, limiter=limiter: limiter.hit(item, f"user:{index % 50}")) - alone)
            print(f"{others:>7,} other windows, {name:<21} {statistics.median(runs) * 100:5.1f}% of a core")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("instructions", "sweep", "child"))
    parser.add_argument("--repo", default=REPO)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    args = parser.parse_args()
    if args.what == "child":
        child(args.repo, args.redis_url, args.requests)
    elif args.what == "sweep":
        sweep()
    else:
        repo = os.path.abspath(args.repo)
        print(f"{repo}: instructions per /api request's rate-limit work")
        print(f"    in memory: {per_request(repo, ''):,}")
        print(f"    in Redis:  {per_request(repo, args.redis_url):,}")


if __name__ == "__main__":
    main()
