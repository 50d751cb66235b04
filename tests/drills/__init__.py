"""Drills: the service under failures and hostile load, most under gunicorn as the Procfile starts it."""
