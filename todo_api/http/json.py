"""Flask's JSON provider on orjson: several times faster, and strict on input.

Naive datetimes are written as UTC with an explicit offset: every timestamp
this service stores is naive UTC (the reference's column type).
"""

import orjson
from flask.json.provider import JSONProvider

OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC


class OrjsonProvider(JSONProvider):
    def dumps(self, obj, **kwargs):
        return orjson.dumps(obj, option=OPTIONS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj, option=OPTIONS), mimetype="application/json")
