"""ETags and conditional requests on one task (RFC 9110, section 13).

A task's ETag is its id and its version, `updated_at` in microseconds since
the epoch: `"42-1764057600123456"`. Every write moves `updated_at` strictly
forward (see `tables.next_version`), so the ETag changes with every change and
costs nothing to compute: both values are in the row already.

If-Match is turned into the versions it names, and the write itself checks
them (`store.write_task`: in its WHERE clause, or on the locked row), so
the check and the change are atomic.
"""

import re
from datetime import datetime, timedelta

from flask import request

from todo_api.tasks.store import Versions

EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; a header is a comma list of them,
# where empty elements are allowed.
_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_ELEMENT = rf"[ \t]*(?:{_ENTITY_TAG}[ \t]*)?"  # unambiguous, so a long bad header cannot backtrack
_TAG_LIST = re.compile(rf"{_ELEMENT}(?:,{_ELEMENT})*")
_TAGS = re.compile(r'(W/)?"([^"]*)"')
_OUR_TAG = re.compile(r"([0-9]{1,10})-([0-9]{1,20})")


def etag(row):
    return etag_of(row.id, row.updated_at)


def etag_of(task_id, updated_at):
    """The strong ETag of the task with this id at this version (naive UTC `updated_at`)."""
    return f'"{task_id}-{(updated_at - EPOCH) // MICROSECOND}"'


def entity_tags(header):
    """The (weak, opaque-tag) pairs of a list of entity tags, or None if it is malformed."""
    if not _TAG_LIST.fullmatch(header):
        return None
    return [(bool(weak), opaque) for weak, opaque in _TAGS.findall(header)]


def _version(opaque, task_id):
    """The `updated_at` that one of our opaque tags names for this task, or None."""
    match = _OUR_TAG.fullmatch(opaque)
    if match is None or int(match[1]) != task_id:
        return None
    try:
        return EPOCH + int(match[2]) * MICROSECOND
    except OverflowError:
        return None


def if_match_versions(task_id: int) -> Versions:
    """The task versions the request's If-Match accepts.

    None when there is no If-Match, or it is `*` (any current task; a missing
    one still answers 404). Otherwise a set of versions, empty when none of
    the tags can match (weak tags never do, under the strong comparison that
    If-Match uses; nor does a malformed header): the write then answers 412.
    """
    return versions_named(request.environ.get("HTTP_IF_MATCH"), task_id)


def versions_named(header: str | None, task_id: int) -> Versions:
    """The task versions an If-Match value accepts (see `if_match_versions`)."""
    if header is None or header.strip() == "*":
        return None
    tags = entity_tags(header) or []
    versions = (_version(opaque, task_id) for weak, opaque in tags if not weak)
    return frozenset(version for version in versions if version is not None)


def not_modified(row):
    """True when If-None-Match names this task's current ETag (weak comparison) or is `*`: answer 304."""
    header = request.environ.get("HTTP_IF_NONE_MATCH")
    if header is None:
        return False
    if header.strip() == "*":
        return True
    current = etag(row)[1:-1]
    return any(opaque == current for _weak, opaque in entity_tags(header) or [])
