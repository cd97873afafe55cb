"""Response masking in the WAF service, message by message as Envoy's ext_proc filter (full
duplex) sends them: what is answered when, and what is never let out. The end-to-end cases
(through a real Envoy) are in test_waf.py."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as P

from controlplane.waf.mask import Unmaskable, mask_body
from controlplane.waf.metrics import Metrics
from controlplane.waf.service import ResponseMasker

CARD = "4111 1111 1111 1111"


def headers(end: bool = False, **values: str) -> P.ProcessingRequest:
    fields = [base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in values.items()]
    return P.ProcessingRequest(
        response_headers=P.HttpHeaders(headers=base_pb2.HeaderMap(headers=fields), end_of_stream=end)
    )


def chunk(data: bytes, end: bool = False) -> P.ProcessingRequest:
    return P.ProcessingRequest(response_body=P.HttpBody(body=data, end_of_stream=end))


def masker(max_bytes: int = 1 << 20) -> ResponseMasker:
    return ResponseMasker(Metrics(), "shop.pay", ["secret"], max_bytes)


def body_of(responses: list[P.ProcessingResponse]) -> bytes:
    return b"".join(
        r.response_body.response.body_mutation.streamed_response.body for r in responses if r.HasField("response_body")
    )


def test_nothing_is_answered_before_the_body_ends() -> None:
    m = masker()
    document = json.dumps({"card": CARD, "secret": "s3", "note": "x" * 200_000}).encode()
    assert m.answer(headers(content_type="application/json", content_length=str(len(document)))) == []
    pieces = [document[i : i + 7000] for i in range(0, len(document), 7000)]
    for piece in pieces[:-1]:
        assert m.answer(chunk(piece)) == []  # not even the headers: a 502 stays possible
    out = m.answer(chunk(pieces[-1], end=True))
    assert out[0].HasField("response_headers")
    assert "content-length" in out[0].response_headers.response.header_mutation.remove_headers
    streamed = [r.response_body.response.body_mutation.streamed_response for r in out[1:]]
    assert [s.end_of_stream for s in streamed] == [False] * (len(streamed) - 1) + [True]
    assert all(len(s.body) <= ResponseMasker.CHUNK for s in streamed)
    masked = json.loads(body_of(out))
    assert masked["card"] == "**** **** **** 1111" and masked["secret"] == "****" and len(masked["note"]) == 200_000


def test_a_card_split_across_chunks_is_masked() -> None:
    m = masker()
    text = f"paid with {CARD} today".encode()
    assert m.answer(headers(content_type="text/plain")) == []
    assert m.answer(chunk(text[:16])) == []
    out = m.answer(chunk(text[16:], end=True))
    assert body_of(out) == b"paid with **** **** **** 1111 today"


def test_trailers_end_the_body() -> None:
    m = masker()
    assert m.answer(headers(content_type="text/plain")) == []
    assert m.answer(chunk(CARD.encode())) == []
    out = m.answer(P.ProcessingRequest(response_trailers=P.HttpTrailers()))
    assert out[0].HasField("response_headers") and out[-1].HasField("response_trailers")
    assert not any(
        r.response_body.response.body_mutation.streamed_response.end_of_stream
        for r in out
        if r.HasField("response_body")
    )
    assert body_of(out) == b"**** **** **** 1111"


def test_a_response_without_a_body_is_answered_at_once() -> None:
    out = masker().answer(headers(end=True, content_type="application/json"))
    assert len(out) == 1 and out[0].HasField("response_headers")


def refused(out: list[P.ProcessingResponse]) -> bool:
    return (
        len(out) == 1
        and out[0].immediate_response.status.code == 502
        and CARD.encode() not in out[0].SerializeToString()
    )


def test_past_the_limit_it_is_refused_and_nothing_more_is_answered() -> None:
    m = masker(max_bytes=10_000)
    assert m.answer(headers(content_type="text/plain")) == []
    assert m.answer(chunk(CARD.encode() + b"x" * 6000)) == []
    assert refused(m.answer(chunk(b"y" * 6000)))
    assert m.answer(chunk(b"z", end=True)) == []


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("br", b"\x1b\x03\x00"),
        ("gzip", b"not gzip at all"),
        ("gzip", gzip.compress(CARD.encode())[:-12]),  # cut short
        ("gzip", gzip.compress(b"0" * 5_000_000)),  # 5 MB from a few KB: a bomb for this limit
    ],
    ids=["brotli", "not-gzip", "truncated-gzip", "gzip-bomb"],
)
def test_what_cannot_be_read_is_refused(encoding: str, data: bytes) -> None:
    m = masker(max_bytes=1 << 20)
    assert m.answer(headers(content_type="text/plain", content_encoding=encoding)) == []
    assert refused(m.answer(chunk(data, end=True)))


def test_compressed_responses_are_sent_decompressed_and_masked() -> None:
    for encoding, data in (("gzip", gzip.compress(CARD.encode())), ("deflate", zlib.compress(CARD.encode()))):
        m = masker()
        assert m.answer(headers(content_type="text/plain", content_encoding=encoding)) == []
        out = m.answer(chunk(data, end=True))
        assert "content-encoding" in out[0].response_headers.response.header_mutation.remove_headers
        assert body_of(out) == b"**** **** **** 1111"


def test_decompression_stops_at_the_limit() -> None:
    with pytest.raises(Unmaskable, match="more than 1000 bytes"):
        mask_body(gzip.compress(b"a" * 1_000_000), "text/plain", "gzip", [], max_bytes=1000)
