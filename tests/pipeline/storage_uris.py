"""Storage URIs built from pieces for hypothesis tests: surrounding whitespace, a scheme in any case (or none),
then a path of the pieces `uris.normalize` and the checks treat specially. gs:// buckets are valid names and
there are no '{...}' placeholders: those rules are the store's and input_uri's, tested apart."""

from __future__ import annotations

from hypothesis import strategies as st

from detection_pipeline import uris

_PIECES = ["/", "//", ".", "..", " ", "\n", "\x01", "é", "%20", "?", "#", ":", "a", "B", "localhost"]


@st.composite
def _storage_uris(draw) -> str:
    space = st.text(st.sampled_from(uris.WHITESPACE), max_size=2)
    scheme = draw(st.sampled_from(["", "gs", "file", "http", "https", "s3"]))
    if scheme:
        authority = {"gs": ["bkt-1/"], "http": ["", "Host.com"], "https": ["", "Host.com"]}.get(scheme, [""])
        head = "".join(c.upper() if draw(st.booleans()) else c for c in scheme)
        head += draw(st.sampled_from(["://", "://", ":///"])) + draw(st.sampled_from(authority))
    else:
        head = draw(st.sampled_from(["", "/"]))
    path = "".join(draw(st.lists(st.sampled_from(_PIECES), max_size=6)))
    extension = draw(st.sampled_from(["", ".jpg", ".JPG", ".pt", ".PT", ".Pth", ".csv", ".txt"]))
    tail = draw(st.sampled_from(["", "/", "/.", "//.", "/./"]))
    return draw(space) + head + path + extension + tail + draw(space)


STORAGE_URIS = _storage_uris()
