"""INSERT ... ON CONFLICT: Postgres and SQLite spell it alike, but SQLAlchemy builds it with each dialect's `insert`."""

from sqlalchemy.dialects import postgresql, sqlite

DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def upsert_per_dialect(build):
    """`{dialect name: build(that dialect's insert)}`: an upsert, built once for each database."""
    return {name: build(insert) for name, insert in DIALECT_INSERTS.items()}
