"""Property tests of store URI handling: whatever a user types, the answer is a parsed URI or one DGError line."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dg_core import store
from dg_core.errors import DGError

SECRET = "pr0p-s3cret"

_pieces = st.sampled_from(
    [
        "s3://",
        "S3://",
        "file://",
        "file:///",
        "gs://",
        "http://",
        "://",
        "/",
        "//",
        "..",
        ".",
        "%2e%2e",
        "%2F",
        "~",
        "~nosuchuser",
        "[",
        "]",
        "[::1]",
        "@",
        f"key:{SECRET}@",
        ":",
        "?",
        "#",
        "\\",
        "\x00",
        " ",
        "\n",
        "bucket",
        "my-bucket.1",
        "B_ad",
        "localhost",
        "a" * 70,
        "é",
        "☃",
        "x/y",
        "%",
        "%zz",
    ]
)
_segments = _pieces.filter(lambda p: SECRET not in p)  # path segments: a secret there is the user's own path
uris = st.one_of(st.text(max_size=40), st.lists(st.one_of(_pieces, st.text(max_size=6)), max_size=8).map("".join))


def _one_line(e: DGError, given: str) -> str:
    msg = str(e)
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    if given.startswith(f"key:{SECRET}@") or f"://key:{SECRET}@" in given:  # where a URL carries credentials
        assert f":{SECRET}@" not in msg, msg  # they never come back intact
    return msg


@settings(max_examples=400, deadline=None)
@given(uris)
@example("s3://[bucket/x")  # urlsplit: "Invalid IPv6 URL"
@example("~nosuchuser/x")  # expanduser of an unknown user
@example("s3://bucket:99999/x")  # a port out of range
@example("file://[::1/x")
@example("a\x00b")
def test_parse_uri_answers_or_raises_one_line(uri):
    try:
        scheme, bucket, path = store.parse_uri(uri)
    except DGError as e:
        _one_line(e, uri)
        return
    assert scheme in ("s3", "file")
    if scheme == "s3":
        assert bucket and re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket) and ".." not in bucket
        segments = path.split("/") if path else []
        assert all(s not in ("", ".", "..") for s in segments), path
        again = store.parse_uri(f"s3://{bucket}/{path}")  # the canonical form parses to the same
        assert again == (scheme, bucket, path)
    else:
        assert bucket is None and path.startswith("/") and ".." not in path.split("/")


@settings(max_examples=300, deadline=None)
@given(uris, st.lists(st.one_of(_segments, st.text(max_size=6)), max_size=4))
def test_join_and_open_store_answer_or_raise_one_line(uri, parts):
    try:
        joined = store.join(uri, *parts)
        scheme, _, _ = store.parse_uri(joined)
        if scheme == "file":
            st_, key = store.open_store(joined)
            assert st_.uri(key).startswith("file:///")
    except DGError as e:
        _one_line(e, uri)
