"""Task writes that Postgres makes in place (HOT), touching no index (migration 0008).

Postgres counts them in pg_stat_user_tables (n_tup_upd, n_tup_hot_upd). Each
backend sends its counts there a while after its transactions end; the app here
has a single pooled connection, so the requests' counts are on the server
connection the test then asks to flush them (pg_stat_force_next_flush) before
reading them.
"""

import pytest
from sqlalchemy import text

from todo_api.db.connections import get_engine
from todo_api.db.migrate import current_revision, downgrade, upgrade

pytestmark = pytest.mark.backends("postgres")

TASK_INDEXES = text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'task'")
TASK_OPTIONS = text("SELECT reloptions FROM pg_class WHERE oid = 'task'::regclass")


@pytest.fixture
def app(make_app):
    return make_app(DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0)


def task_updates(app):
    """(updates, of which HOT) of the task table so far, the app's pending counts included."""
    with get_engine(app).connect() as connection:
        connection.execute(text("SELECT pg_stat_force_next_flush()"))  # sent once this statement is done
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        counts = connection.execute(
            text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'task'")
        ).one()
    return tuple(counts)


def test_toggles_completions_and_edits_of_unindexed_fields_are_hot_updates(client, auth, create_task):
    task_id = create_task(title="Water the plants", tags=["home"])["id"]
    updates, hot = task_updates(client.application)
    writes = [
        ("PATCH", f"/api/tasks/{task_id}/complete", None),
        ("PATCH", f"/api/tasks/{task_id}/complete", None),
        ("PATCH", f"/api/tasks/{task_id}/complete", {"completed": True}),
        ("PUT", f"/api/tasks/{task_id}", {"completed": False}),
        ("PUT", f"/api/tasks/{task_id}", {"category": "garden", "tags": ["home", "weekly"]}),
        ("PUT", f"/api/tasks/{task_id}", {"title": "Water the plants"}),  # the same title: no index changes
    ]
    for method, path, body in writes:
        assert client.open(path, method=method, headers=auth, json=body).status_code == 200
    assert task_updates(client.application) == (updates + len(writes), hot + len(writes))


def test_a_write_that_changes_an_indexed_field_is_not(client, auth, create_task):
    """The counterpart: a new title goes into the title indexes, so Postgres writes the row anew."""
    task_id = create_task(title="Water the plants")["id"]
    updates, hot = task_updates(client.application)
    assert client.put(f"/api/tasks/{task_id}", headers=auth, json={"title": "Water the roses"}).status_code == 200
    assert task_updates(client.application) == (updates + 1, hot)


def test_no_task_index_names_a_column_that_toggles_change(app):
    with get_engine(app).connect() as connection:
        indexes = dict(connection.execute(TASK_INDEXES).all())
        options = connection.execute(TASK_OPTIONS).scalar_one()
    assert "ix_task_user_updated" not in indexes
    naming = [name for name, definition in indexes.items() if "updated_at" in definition or "completed" in definition]
    assert naming == []
    assert indexes["ix_task_reminder_at"].endswith("(remind_at) WHERE (NOT reminder_sent)")
    assert indexes["ix_task_reminder_due_date"].endswith(
        "(due_date) WHERE ((remind_at IS NULL) AND (NOT reminder_sent))"
    )
    assert options == ["fillfactor=90"]


def test_the_revision_goes_back_to_the_indexes_and_fillfactor_before_it(app):
    engine = get_engine(app)
    downgrade(engine, "0007")
    assert current_revision(engine) == "0007"
    with engine.connect() as connection:
        indexes = dict(connection.execute(TASK_INDEXES).all())
        options = connection.execute(TASK_OPTIONS).scalar_one()
    assert indexes["ix_task_user_updated"].endswith("(user_id, updated_at, id)")
    assert indexes["ix_task_reminder_at"].endswith("(remind_at) WHERE ((NOT reminder_sent) AND (NOT completed))")
    assert indexes["ix_task_reminder_due_date"].endswith(
        "(due_date) WHERE ((remind_at IS NULL) AND (NOT reminder_sent) AND (NOT completed))"
    )
    assert options is None
    upgrade(engine)
    with engine.connect() as connection:
        assert "ix_task_user_updated" not in dict(connection.execute(TASK_INDEXES).all())
        assert connection.execute(TASK_OPTIONS).scalar_one() == ["fillfactor=90"]
