"""Encryption at rest: the AES-GCM payload codec, its keys and key files, the data converter, and
the codec server for the Web UI served over real HTTP. No Temporal server is needed."""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from api.errors import ApiError, install_error_handlers
from api.routes.codec import codec_cors, codec_router
from dialogue.platform.codec import (
    ENCODING,
    METADATA_KEY_ID,
    EncryptionCodec,
    PayloadDecryptionError,
    PayloadKeys,
    UnknownKeyError,
    encrypted_data_converter,
    promote,
    rotate,
)
from tests.conftest import serve

pytestmark = pytest.mark.unit  # pure code: `make check` runs it

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
UI_ORIGIN = "http://localhost:8233"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def urlsafe(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def spec(*pairs: tuple[str, bytes]) -> str:
    return ",".join(f"{key_id}:{b64(key)}" for key_id, key in pairs)


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


# -- the codec ------------------------------------------------------------------------------------------


async def test_round_trip_restores_each_payload_exactly() -> None:
    codec = EncryptionCodec(PayloadKeys.parse(spec(("k1", K1))))
    originals = [plain("hello"), Payload(metadata={"encoding": b"binary/null"}), plain("x" * 5000)]

    encoded = await codec.encode(originals)

    for sealed, original in zip(encoded, originals, strict=True):
        assert sealed.metadata["encoding"] == ENCODING
        assert sealed.metadata[METADATA_KEY_ID] == b"k1"
        assert original.data not in sealed.data or not original.data
        assert b"json/plain" not in sealed.data  # the original's metadata is sealed too
    assert await codec.decode(encoded) == originals


async def test_the_same_payload_encrypts_differently_each_time() -> None:
    codec = EncryptionCodec(PayloadKeys.parse(spec(("k1", K1))))
    first, second = await codec.encode([plain("same"), plain("same")])
    assert first.data[:12] != second.data[:12]  # a fresh nonce
    assert first.data != second.data
    assert await codec.decode([first, second]) == [plain("same"), plain("same")]


async def test_rotation_keeps_old_payloads_readable_and_seals_new_ones_with_the_new_key() -> None:
    old = await EncryptionCodec(PayloadKeys.parse(spec(("k1", K1)))).encode([plain("before")])
    rotated = EncryptionCodec(PayloadKeys.parse(spec(("k2", K2), ("k1", K1))))

    new = await rotated.encode([plain("after")])

    assert rotated.current_key_id == "k2"
    assert new[0].metadata[METADATA_KEY_ID] == b"k2"
    assert await rotated.decode([*old, *new]) == [plain("before"), plain("after")]


async def test_an_unknown_key_id_is_named_in_the_error_but_no_key_is() -> None:
    sealed = await EncryptionCodec(PayloadKeys.parse(spec(("retired", K2)))).encode([plain("secret")])
    codec = EncryptionCodec(PayloadKeys.parse(spec(("k1", K1))))

    with pytest.raises(UnknownKeyError) as caught:
        await codec.decode(sealed)

    assert caught.value.key_id == "retired"
    assert "'retired'" in str(caught.value)
    for key in (K1, K2):
        assert b64(key) not in str(caught.value) and urlsafe(key) not in str(caught.value)


async def test_tampered_ciphertext_fails_authentication() -> None:
    codec = EncryptionCodec(PayloadKeys.parse(spec(("k1", K1))))
    (sealed,) = await codec.encode([plain("pay 10 EUR")])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])

    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([tampered])

    truncated = Payload(metadata=dict(sealed.metadata), data=sealed.data[:20])
    with pytest.raises(PayloadDecryptionError, match="truncated"):
        await codec.decode([truncated])


async def test_a_payload_relabelled_with_another_known_key_id_fails() -> None:
    """The key id is the AAD: moving a payload under another id is caught, not misread."""
    codec = EncryptionCodec(PayloadKeys.parse(spec(("k2", K2), ("k1", K1))))
    (sealed,) = await codec.encode([plain("x")])
    relabelled = Payload(metadata={"encoding": ENCODING, METADATA_KEY_ID: b"k1"}, data=sealed.data)
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([relabelled])


async def test_payloads_recorded_before_encryption_pass_through_decoding() -> None:
    codec = EncryptionCodec(PayloadKeys.parse(spec(("k1", K1))))
    recorded = [plain("from last year"), Payload(metadata={"encoding": b"binary/plain"}, data=b"\x00\x01")]
    mixed = [recorded[0], *(await codec.encode([plain("new")])), recorded[1]]
    assert await codec.decode(mixed) == [recorded[0], plain("new"), recorded[1]]


async def test_an_encrypted_payload_without_a_key_id_is_refused() -> None:
    codec = EncryptionCodec(PayloadKeys.parse(spec(("k1", K1))))
    with pytest.raises(PayloadDecryptionError, match=METADATA_KEY_ID):
        await codec.decode([Payload(metadata={"encoding": ENCODING}, data=os.urandom(40))])


# -- keys -----------------------------------------------------------------------------------------------


def test_parse_takes_either_base64_alphabet_with_or_without_padding() -> None:
    key = bytes([0xFB, 0xFF] * 16)  # encodes with '+' and '/' (standard) or '-' and '_' (URL-safe)
    keys = PayloadKeys.parse(f" a:{b64(key)} , b-2:{urlsafe(K1).rstrip('=')},c_3:{b64(K2)}\n")
    assert list(keys) == ["a", "b-2", "c_3"]
    assert keys.current_id == "a"
    assert keys["a"] == key and keys["b-2"] == K1 and keys["c_3"] == K2
    assert PayloadKeys.parse(keys.spec()) == keys
    assert keys.with_current("c_3") != keys  # same keys, another current one


def test_keys_never_show_in_their_repr() -> None:
    keys = PayloadKeys.parse(spec(("k1", K1), ("k2", K2)))
    shown = repr(keys) + str(keys)
    assert "k1" in shown and "k2" in shown
    for key in (K1, K2):
        assert b64(key) not in shown and urlsafe(key) not in shown and repr(key) not in shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no payload keys"),
        (f"k1:{b64(K1)[:-4]}!!!!", "not valid base64"),
        (f"k1:{b64(K1)} extra", "not valid base64"),
        (f"k1:{b64(K1[:16])}", "16 bytes, AES-256 needs 32"),
        (f"k1:{b64(K1 + b'x')}", "33 bytes"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", "duplicate key id 'k1'"),
        (f"bad id:{b64(K1)}", "key 1: key id must match"),
        (f"{'x' * 33}:{b64(K1)}", "key 1: key id must match"),
        (f"k1:{b64(K1)},:{b64(K2)}", "key 2: key id must match"),
        (f"k1:{b64(K1)},{b64(K2)}", "key 2: expected 'id:BASE64KEY'"),
        (f"k1:{b64(K1)},", "key 2: expected 'id:BASE64KEY'"),
    ],
)
def test_parse_errors_say_what_is_wrong_without_quoting_key_material(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as caught:
        PayloadKeys.parse(text)
    message = str(caught.value)
    for key in (K1, K2, K1[:16], K1 + b"x"):
        for encoded in (b64(key), urlsafe(key), b64(key)[:-4], b64(key)[:16]):
            assert encoded not in message


def test_constructor_checks_ids_and_lengths() -> None:
    with pytest.raises(ValueError, match="no payload keys"):
        PayloadKeys({})
    with pytest.raises(ValueError, match="31 bytes"):
        PayloadKeys({"k1": K1[:31]})
    with pytest.raises(ValueError, match="key id must match"):
        PayloadKeys({"k/1": K1})


def test_generate_makes_a_fresh_32_byte_key() -> None:
    first, second = PayloadKeys.generate("k1"), PayloadKeys.generate()
    assert list(first) == ["k1"] and len(first["k1"]) == 32
    assert first["k1"] != second[second.current_id]
    assert second.current_id.startswith("k")


def test_create_file_is_private_from_the_start_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "payload-keys"
    old_umask = os.umask(0o000)  # even a permissive umask cannot widen it
    try:
        keys = PayloadKeys.create_file(path, "k1")
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PayloadKeys.load(path) == keys
    assert os.listdir(path.parent) == ["payload-keys"]  # no temporary file left behind
    with pytest.raises(FileExistsError):
        PayloadKeys.create_file(path, "k9")
    assert PayloadKeys.load(path) == keys


def test_load_or_create_makes_the_file_once(tmp_path: Path) -> None:
    path = tmp_path / "payload-keys"
    first = PayloadKeys.load_or_create(path)
    assert PayloadKeys.load_or_create(path) == first


def test_load_names_the_file_but_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "payload-keys"
    path.write_text(f"k1:{b64(K1[:20])}\n")
    with pytest.raises(ValueError, match="payload-keys: key 'k1': decodes to 20 bytes") as caught:
        PayloadKeys.load(path)
    assert b64(K1[:20]) not in str(caught.value)


async def test_rotate_prepends_a_key_and_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "payload-keys"
    original = PayloadKeys.create_file(path, "k1")
    (old,) = await EncryptionCodec(original).encode([plain("old")])

    rotated = rotate(path, "k2")

    assert list(rotated) == ["k2", "k1"] and rotated["k1"] == original["k1"]
    assert PayloadKeys.load(path) == rotated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["payload-keys"]
    codec = EncryptionCodec(PayloadKeys.load(path))
    (new,) = await codec.encode([plain("new")])
    assert new.metadata[METADATA_KEY_ID] == b"k2"
    assert await codec.decode([old, new]) == [plain("old"), plain("new")]
    with pytest.raises(ValueError, match="duplicate key id 'k1'"):
        rotate(path, "k1")


def test_staged_rotation_adds_a_key_last_then_promotes_it(tmp_path: Path) -> None:
    path = tmp_path / "payload-keys"
    PayloadKeys.create_file(path, "k1")
    assert list(rotate(path, "k2", current=False)) == ["k1", "k2"]
    assert list(promote(path, "k2")) == ["k2", "k1"]
    assert PayloadKeys.load(path).current_id == "k2"


# -- the data converter ---------------------------------------------------------------------------------


class Order(BaseModel):
    customer: str
    note: str


async def test_without_keys_the_converter_is_the_plain_pydantic_one() -> None:
    assert encrypted_data_converter(None) is pydantic_data_converter


async def test_the_encrypted_converter_seals_models_and_reads_them_back() -> None:
    converter = encrypted_data_converter(PayloadKeys.parse(spec(("k1", K1))))
    order = Order(customer="Ada", note="my card ends in 4242")

    (payload,) = await converter.encode([order])

    assert payload.metadata["encoding"] == ENCODING
    assert b"4242" not in payload.SerializeToString()
    assert await converter.decode([payload], [Order]) == [order]
    # History recorded before encryption (plain pydantic JSON) still reads.
    (recorded,) = await pydantic_data_converter.encode([order])
    assert await converter.decode([recorded], [Order]) == [order]


async def test_the_encrypted_converter_seals_failure_messages_too() -> None:
    converter = encrypted_data_converter(PayloadKeys.parse(spec(("k1", K1))))
    failure = Failure()

    await converter.encode_failure(ApplicationError("card 4242 was declined", type="Declined"), failure)

    assert b"4242" not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert isinstance(decoded, ApplicationError)
    assert (decoded.message, decoded.type) == ("card 4242 was declined", "Declined")

    readable = Failure()
    plain_converter = encrypted_data_converter(PayloadKeys.parse(spec(("k1", K1))), encode_failures=False)
    await plain_converter.encode_failure(ApplicationError("visible", type="X"), readable)
    assert readable.message == "visible"


# -- the codec server over HTTP -------------------------------------------------------------------------

GOOD_TOKEN = "Bearer operator-token"


async def authorize(request: Request) -> None:
    header = request.headers.get("authorization")
    if not header:
        raise ApiError("unauthenticated", "send a bearer token", {"WWW-Authenticate": "Bearer"})
    if header != GOOD_TOKEN:
        raise ApiError("forbidden", "this token may not decode payloads")


def codec_app(keys: PayloadKeys) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(codec_router(EncryptionCodec(keys), authorize, max_body_bytes=16 * 1024))

    @app.post("/v1/other")
    async def other() -> dict[str, str]:
        return {"ok": "yes"}

    codec_cors(app, [UI_ORIGIN])
    return app


@pytest.fixture
async def codec_http() -> AsyncIterator[httpx.AsyncClient]:
    server, task, base_url = await serve(codec_app(PayloadKeys.parse(spec(("k2", K2), ("k1", K1)))))
    try:
        headers = {"Authorization": GOOD_TOKEN, "X-Namespace": "default"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task


# What the Web UI and `temporal` CLI send: proto3 JSON, every bytes field base64.
UI_BODY = {
    "payloads": [
        {"metadata": {"encoding": b64(b"json/plain")}, "data": b64(b'{"text":"where is my order?"}')},
        {"metadata": {"encoding": b64(b"json/plain"), "messageType": b64(b"Order")}, "data": b64(b'"x"')},
    ]
}


async def test_encode_then_decode_over_http_in_the_protocol_shape(codec_http: httpx.AsyncClient) -> None:
    encoded = await codec_http.post("/codec/encode", json=UI_BODY)
    assert encoded.status_code == 200, encoded.text
    assert encoded.headers["content-type"] == "application/json"
    body = encoded.json()
    assert list(body) == ["payloads"] and len(body["payloads"]) == 2
    for payload in body["payloads"]:
        assert set(payload) == {"metadata", "data"}
        assert payload["metadata"] == {"encoding": b64(ENCODING), METADATA_KEY_ID: b64(b"k2")}
        assert b"where is my order" not in base64.b64decode(payload["data"])

    decoded = await codec_http.post("/codec/decode", json=body)
    assert decoded.status_code == 200, decoded.text
    assert decoded.json() == UI_BODY


async def test_decode_reads_what_a_worker_sealed_and_passes_plain_payloads_through(
    codec_http: httpx.AsyncClient,
) -> None:
    worker_codec = EncryptionCodec(PayloadKeys.parse(spec(("k1", K1))))  # before the rotation to k2
    (sealed,) = await worker_codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"hi"')])
    body = {
        "payloads": [
            {"metadata": {k: b64(v) for k, v in sealed.metadata.items()}, "data": b64(sealed.data)},
            UI_BODY["payloads"][0],
        ]
    }
    response = await codec_http.post("/codec/decode", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "payloads": [
            {"metadata": {"encoding": b64(b"json/plain")}, "data": b64(b'"hi"')},
            UI_BODY["payloads"][0],
        ]
    }


async def test_empty_payloads_answer_an_empty_list(codec_http: httpx.AsyncClient) -> None:
    bodies: list[dict[str, list[object]]] = [{"payloads": []}, {}]
    for body in bodies:
        response = await codec_http.post("/codec/decode", json=body)
        assert (response.status_code, response.json()) == (200, {"payloads": []})


async def test_authorize_refuses_before_anything_is_decoded(codec_http: httpx.AsyncClient) -> None:
    missing = await codec_http.post("/codec/decode", json=UI_BODY, headers={"Authorization": ""})
    assert missing.status_code == 401
    assert missing.json() == {"error": {"code": "unauthenticated", "message": "send a bearer token"}}
    assert missing.headers["www-authenticate"] == "Bearer"

    wrong = await codec_http.post("/codec/encode", json=UI_BODY, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "forbidden"

    # Refused before the body is read: even garbage gets the 403, not a 422.
    garbage = await codec_http.post("/codec/decode", content=b"{", headers={"Authorization": "Bearer nope"})
    assert garbage.status_code == 403


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected an object"),
        (b'{"payloads": {}}', "payloads: expected an array"),
        (b'{"payloads": ["x"]}', r"payloads\[0\]: expected an object"),
        (b'{"payloads": [{"data": "!!!"}]}', r"payloads\[0\].data: not valid base64"),
        (b'{"payloads": [{"data": 5}]}', r"payloads\[0\].data: expected a base64 string"),
        (b'{"payloads": [{"metadata": {"encoding": "a b"}}]}', "metadata.encoding: not valid base64"),
        (b'{"payloads": [{"metadata": []}]}', "metadata: expected an object"),
        (b'{"payloads": [{"data": "YQ==", "extra": 1}]}', "no field named"),
    ],
)
async def test_malformed_bodies_are_422_in_the_api_error_shape(
    codec_http: httpx.AsyncClient, content: bytes, expected: str
) -> None:
    response = await codec_http.post(
        "/codec/decode", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == "invalid_payloads"
    assert re.search(expected, error["message"]), error["message"]


async def test_a_payload_the_codec_cannot_open_is_422_naming_the_key_id(
    codec_http: httpx.AsyncClient,
) -> None:
    stranger = EncryptionCodec(PayloadKeys.parse(spec(("lost-key", os.urandom(32)))))
    (sealed,) = await stranger.encode([plain("x")])
    body = {
        "payloads": [{"metadata": {k: b64(v) for k, v in sealed.metadata.items()}, "data": b64(sealed.data)}]
    }
    response = await codec_http.post("/codec/decode", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "undecodable_payload"
    assert "'lost-key'" in response.json()["error"]["message"]


async def test_only_json_bodies_are_taken(codec_http: httpx.AsyncClient) -> None:
    response = await codec_http.post(
        "/codec/decode", content=b'{"payloads": []}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


async def test_bodies_over_the_limit_are_413(codec_http: httpx.AsyncClient) -> None:
    big = {"payloads": [{"data": b64(b"x" * 20_000)}]}
    declared = await codec_http.post("/codec/encode", json=big)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "content_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"payloads": [{"data": "'
        for _ in range(30):
            yield b"eHh4" * 256
        yield b'"}]}'

    streamed = await codec_http.post(
        "/codec/encode", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "content_too_large"


PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
}


async def test_cors_preflight_from_the_ui_origin_is_allowed(codec_http: httpx.AsyncClient) -> None:
    response = await codec_http.options(
        "/codec/decode", headers={"Origin": UI_ORIGIN, **PREFLIGHT, "Authorization": ""}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-namespace", "authorization"} <= allowed

    # The actual request (and its errors) carry the headers the browser needs to read them.
    actual = await codec_http.post("/codec/decode", json=UI_BODY, headers={"Origin": UI_ORIGIN})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == UI_ORIGIN
    refused = await codec_http.post(
        "/codec/decode", json=UI_BODY, headers={"Origin": UI_ORIGIN, "Authorization": "Bearer nope"}
    )
    assert refused.status_code == 403
    assert refused.headers["access-control-allow-origin"] == UI_ORIGIN


async def test_cors_from_another_origin_is_refused(codec_http: httpx.AsyncClient) -> None:
    response = await codec_http.options(
        "/codec/decode", headers={"Origin": "https://evil.example", **PREFLIGHT}
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers

    actual = await codec_http.post("/codec/decode", json=UI_BODY, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in actual.headers


async def test_cors_stays_off_the_rest_of_the_api(codec_http: httpx.AsyncClient) -> None:
    response = await codec_http.options("/v1/other", headers={"Origin": UI_ORIGIN, **PREFLIGHT})
    assert "access-control-allow-origin" not in response.headers
    assert response.status_code == 405
    actual = await codec_http.post("/v1/other", headers={"Origin": UI_ORIGIN})
    assert actual.status_code == 200
    assert "access-control-allow-origin" not in actual.headers


def test_codec_cors_refuses_a_wildcard_origin_and_skips_no_origins() -> None:
    app = FastAPI()
    with pytest.raises(ValueError, match="explicit origins"):
        codec_cors(app, ["*"])
    codec_cors(app, [])
    assert app.user_middleware == []


async def test_codec_cors_added_after_an_app_wide_cors_answers_the_codec_preflight() -> None:
    """`create_app` may add Starlette's CORS for the API's own origins; `codec_cors`, added after it,
    sits outside and answers the UI's preflight (which the app-wide one would refuse: X-Namespace)."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(codec_router(EncryptionCodec(PayloadKeys.generate("k1")), authorize))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["https://app.example"],
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
    )
    codec_cors(app, [UI_ORIGIN])
    server, task, base_url = await serve(app)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            preflight = await client.options("/codec/decode", headers={"Origin": UI_ORIGIN, **PREFLIGHT})
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
            actual = await client.post(
                "/codec/decode", json=UI_BODY, headers={"Origin": UI_ORIGIN, "Authorization": GOOD_TOKEN}
            )
            assert actual.status_code == 200
            assert actual.headers.get_list("access-control-allow-origin") == [UI_ORIGIN]
    finally:
        server.should_exit = True
        await task
