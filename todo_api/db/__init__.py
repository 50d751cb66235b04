"""The database: `engine` builds the engine for DATABASE_URL; `connections` owns it for the app (`init_app`,
`get_engine`) and gives a request its connection (`get_db`, `transaction`, `run_retrying_once`); `driver` runs
the hot routes' statements on psycopg2's cursor; `tables` and `migrate` are the schema, `upsert` the dialects'
INSERT ... ON CONFLICT, `token_digest` the session token's digest in SQL. Nothing here imports the packages
built on it."""
