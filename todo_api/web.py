"""How the app speaks HTTP beyond its routes: the body limit on every body, URLs matched without redirects."""

from flask import Request
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


def init_app(app):
    """Call before any route is added: a rule takes the URL map's settings when it is added."""
    app.request_class = BoundedRequest
    # Werkzeug answers `/api//tasks` with a redirect to the merged path on the host the request named
    # (`Location: http://evil.example/api/tasks`). No URL here redirects: such a path is a 404.
    app.url_map.merge_slashes = False
    app.url_map.redirect_defaults = False
