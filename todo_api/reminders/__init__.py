"""Reminders pushed to the users' browsers: the subscription routes (loaded by the web app), the rule for what an
endpoint may be, and the worker, its pushes and their network calls (loaded by `flask --app todo_api reminders
run` only)."""
