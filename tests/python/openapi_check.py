"""Checks real ingest exchanges against govbus's OpenAPI document with a
stock validator (openapi-core): reads {"spec": ..., "exchanges": [...]} on
standard input, prints one JSON line per exchange saying whether its
request and its answer are valid (or why not)."""

import json
import sys

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse


def check(call):
    try:
        call()
        return "ok"
    except Exception as e:  # the validator's reason, whatever its class
        causes = []
        while e is not None:
            try:
                causes.append(f"{type(e).__name__}: {e}")
            except Exception:  # an exception whose text does not render
                causes.append(type(e).__name__)
            e = e.__cause__
        return " <- ".join(causes)


def main():
    given = json.load(sys.stdin)
    api = OpenAPI.from_dict(given["spec"])
    for x in given["exchanges"]:
        request = MockRequest(
            "http://localhost",
            x["method"].lower(),
            x["path"],
            data=x["body"].encode() if x.get("body") is not None else None,
            content_type="application/json",
        )
        response = MockResponse(
            data=json.dumps(x["answer"]).encode(),
            status_code=x["status"],
            content_type="application/json",
        )
        print(
            json.dumps(
                {
                    "request": check(lambda: api.validate_request(request)),
                    "answer": check(lambda: api.validate_response(request, response)),
                }
            )
        )


if __name__ == "__main__":
    main()
