"""How the app speaks HTTP beyond its routes.

The body limit on every body, URLs matched without redirects, and the headers
every response carries: `X-Content-Type-Options: nosniff` everywhere;
`Vary: Origin` everywhere, since CORS answers on every path and its headers
depend on the Origin; and `Cache-Control: no-store` on `/api`, whose answers
are one user's data (errors included).
"""

from flask import Request, request
from flask.sessions import SessionInterface
from werkzeug.exceptions import RequestEntityTooLarge


class BoundedRequest(Request):
    """Flask's request, with MAX_CONTENT_LENGTH enforced on bodies of unknown length too.

    Werkzeug refuses a `Content-Length` over the limit, but a chunked body (no
    length; gunicorn sets `wsgi.input_terminated`) is read up to the limit and
    the rest silently dropped: a body cut at 1 MiB could be stored. Here a body
    that reaches the limit and goes on is a 413.
    """

    def get_data(self, cache=True, as_text=False, parse_form_data=False):
        data = super().get_data(cache=cache, as_text=False, parse_form_data=parse_form_data)
        self.refuse_if_cut(data)
        return data.decode(errors="replace") if as_text else data

    def refuse_if_cut(self, data):
        limit = self.max_content_length
        if limit is None or self.content_length is not None or len(data) < limit:
            return
        # The limited stream stopped at the limit; one more byte from the server's stream means it was cut.
        if self.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()


def is_api(path):
    # Werkzeug matches `//api/tasks` as `/api/tasks`, so leading slashes do not count.
    return path.lstrip("/").split("/", 1)[0] == "api"


class NoCookieSessions(SessionInterface):
    """No Flask session: a request's identity is its Better Auth session (see `auth`), and no route stores
    anything in a cookie. Flask's default would still sign and check a cookie on every request."""

    def open_session(self, app, request):
        return None  # Flask then uses a null session, which nothing writes to

    def save_session(self, app, session, response):
        pass


def protective_headers(response):
    """Headers no other part of the app sets: added, not set (Werkzeug's `set` compares every header's name)."""
    headers = response.headers
    headers.add("X-Content-Type-Options", "nosniff")
    headers.add("Vary", "Origin")
    if is_api(request.path):
        headers.add("Cache-Control", "no-store")
    return response


def init_app(app):
    """Call before any route is added: a rule takes the URL map's settings when it is added."""
    app.request_class = BoundedRequest
    app.session_interface = NoCookieSessions()
    # Werkzeug answers `/api//tasks` with a redirect to the merged path on the host the request named
    # (`Location: http://evil.example/api/tasks`). No URL here redirects: such a path is a 404.
    app.url_map.merge_slashes = False
    app.url_map.redirect_defaults = False
    # Registered first, so it runs last: after CORS and the rate-limit headers.
    app.after_request(protective_headers)
