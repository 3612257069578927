"""Encryption at rest for everything the SDK hands Temporal: a payload codec with rotating keys.

Every payload (workflow and activity inputs and results, update arguments and replies,
memos, and, through the failure converter, failure messages and stack traces) is
sealed with AES-256-GCM before it leaves the process, so the Temporal server, its
database and anyone reading the Web UI without the codec server see only ciphertext.
Search attributes are the exception: the server must index them, so they stay readable.

    keys = PayloadKeys.load_or_create(settings.data_dir / "payload-keys")
    client = await Client.connect(..., data_converter=encrypted_data_converter(keys))

An encoded payload:

    metadata  encoding: binary/encrypted, encryption-key-id: <key id>
    data      nonce (12 random bytes) + AES-GCM(serialized original Payload), AAD = key id

The whole original Payload (its metadata too) is sealed, so decoding gives back exactly
what the payload converter produced. Keys rotate: new payloads use the first (current)
key, and a payload names the key that sealed it, so histories written under an older key
stay readable for as long as that key stays in the list. Payloads recorded before
encryption was turned on carry no encrypted encoding and pass through decoding unchanged.

Key file: one line, `id1:BASE64KEY,id2:BASE64KEY`, the current key first. Never delete a
key while any history (within the namespace's retention) may still be sealed with it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

log = logging.getLogger("dialogue.platform.codec")

ENCODING = b"binary/encrypted"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM standard nonce; random per payload, so a key may seal ~2**32 payloads safely
TAG_BYTES = 16
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Standard or URL-safe alphabet, padding optional: validated before decoding, because
# `base64.b64decode` silently drops characters outside its alphabet.
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


class PayloadDecryptionError(ValueError):
    """A payload marked encrypted that cannot be opened. Never carries key material."""

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class UnknownKeyError(PayloadDecryptionError):
    """The payload names a key id that is not among the configured keys."""


def _shown(key_id: str) -> str:
    # A key id read from a payload is untrusted: quoted and bounded before it reaches a message.
    return repr(key_id[:64] + ("…" if len(key_id) > 64 else ""))


def decode_base64(text: str) -> bytes:
    """Strict base64, standard or URL-safe alphabet, padding optional. ValueError quotes none of `text`."""
    text = text.strip()
    if not _BASE64.fullmatch(text) or len(text.rstrip("=")) % 4 == 1:
        raise ValueError("not valid base64")
    unpadded = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not valid base64") from None


def default_key_id() -> str:
    """A fresh, sortable key id: `kYYYYMMDD-xxxxxx`."""
    return f"k{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"


class PayloadKeys(Mapping[str, bytes]):
    """Key id → 32-byte AES key, in order; the first is the current key, used for new payloads.

    Its repr names the key ids only, so logging it leaks nothing.
    """

    def __init__(self, keys: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> None:
        pairs = list(keys.items() if isinstance(keys, Mapping) else keys)
        if not pairs:
            raise ValueError("no payload keys given")
        ordered: dict[str, bytes] = {}
        for position, (key_id, key) in enumerate(pairs, start=1):
            if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
                raise ValueError(f"key {position}: key id must match {KEY_ID_PATTERN.pattern}")
            if key_id in ordered:
                raise ValueError(f"duplicate key id {key_id!r}")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r}: {len(key)} bytes, AES-256 needs {KEY_BYTES}")
            ordered[key_id] = bytes(key)
        self._keys = ordered

    # -- Mapping ---------------------------------------------------------------------------------------

    def __getitem__(self, key_id: str) -> bytes:
        return self._keys[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        # Order matters (the first key is the current one), unlike Mapping's own comparison.
        if isinstance(other, PayloadKeys):
            return list(self._keys.items()) == list(other._keys.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PayloadKeys(current={self.current_id!r}, ids={list(self._keys)!r})"

    @property
    def current_id(self) -> str:
        return next(iter(self._keys))

    # -- the spec: "id1:BASE64KEY,id2:BASE64KEY" -------------------------------------------------------

    @classmethod
    def parse(cls, spec: str) -> PayloadKeys:
        """Keys from `id1:BASE64KEY,id2:BASE64KEY` (first is current; either base64 alphabet).

        Error messages name entries by position or valid key id, never by their key text.
        """
        pairs: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        entries = spec.strip().split(",")
        if entries == [""]:
            raise ValueError("no payload keys given")
        for position, entry in enumerate(entries, start=1):
            key_id, colon, encoded = entry.strip().partition(":")
            if not colon:
                # Without the colon the whole entry may be a key: describe it, never echo it.
                raise ValueError(f"key {position}: expected 'id:BASE64KEY'")
            if not KEY_ID_PATTERN.fullmatch(key_id):
                raise ValueError(f"key {position}: key id must match {KEY_ID_PATTERN.pattern}")
            if key_id in seen:
                raise ValueError(f"duplicate key id {key_id!r}")
            seen.add(key_id)
            try:
                key = decode_base64(encoded)
            except ValueError:
                raise ValueError(f"key {key_id!r}: not valid base64") from None
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r}: decodes to {len(key)} bytes, AES-256 needs {KEY_BYTES}")
            pairs.append((key_id, key))
        return cls(pairs)

    def spec(self) -> str:
        """The keys as a spec string (URL-safe base64). It IS the key material: write it only to private files."""
        return ",".join(
            f"{key_id}:{base64.urlsafe_b64encode(key).decode('ascii')}" for key_id, key in self._keys.items()
        )

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def generate(cls, key_id: str | None = None) -> PayloadKeys:
        """One new random key."""
        return cls([(key_id or default_key_id(), AESGCM.generate_key(bit_length=256))])

    def with_key(self, key_id: str, key: bytes, *, current: bool = True) -> PayloadKeys:
        """These keys plus one more, first (current) or last (decodable, not yet used to encode)."""
        pairs = list(self._keys.items())
        return PayloadKeys([(key_id, key), *pairs] if current else [*pairs, (key_id, key)])

    def with_current(self, key_id: str) -> PayloadKeys:
        """The same keys with `key_id` moved first."""
        if key_id not in self._keys:
            raise KeyError(f"no key with id {key_id!r}")
        return PayloadKeys([(key_id, self._keys[key_id])] + [p for p in self._keys.items() if p[0] != key_id])

    # -- files -----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> PayloadKeys:
        """Keys from a spec file. Warns when the file is readable by group or others."""
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("payload key file %s is accessible to group or others (mode %o)", path, mode & 0o777)
        try:
            return cls.parse(path.read_text(encoding="ascii"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a payload key file") from None
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def create_file(cls, path: Path, key_id: str | None = None) -> PayloadKeys:
        """A new key in a new file, mode 0600 from its creation. FileExistsError if `path` exists:
        an existing key file is never overwritten (it may be the only copy of a key)."""
        keys = cls.generate(key_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, keys.spec(), replace=False)
        return keys

    @classmethod
    def load_or_create(cls, path: Path) -> PayloadKeys:
        """The development default: the keys in `path`, made there on first use.

        Safe when several processes (API, worker) start together: the file appears whole or not
        at all, and the loser of a race to create it reads the winner's.
        """
        try:
            return cls.load(path)
        except FileNotFoundError:
            pass
        try:
            return cls.create_file(path)
        except FileExistsError:
            return cls.load(path)


def rotate(path: Path, new_id: str | None = None, *, current: bool = True) -> PayloadKeys:
    """Add a new key to the key file, keeping every old one; returns the new keys.

    `current=True` makes it the key new payloads use at once. In a rolling deploy, where
    processes pick up the file at different times, first `rotate(..., current=False)` (every
    process learns to decode with it), restart everything, then `promote(path, key_id)`.
    Processes read the file at start-up only.
    """
    keys = PayloadKeys.load(path)
    key_id = new_id or default_key_id()
    if key_id in keys:
        raise ValueError(f"duplicate key id {key_id!r}")
    rotated = keys.with_key(key_id, AESGCM.generate_key(bit_length=256), current=current)
    _write_private(path, rotated.spec(), replace=True)
    return rotated


def promote(path: Path, key_id: str) -> PayloadKeys:
    """Make an existing key in the file the current one."""
    promoted = PayloadKeys.load(path).with_current(key_id)
    _write_private(path, promoted.spec(), replace=True)
    return promoted


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write `text` to `path` atomically, the file private (0600) from the moment it exists.

    The content goes to a temporary file created O_EXCL with mode 0600 beside `path`, then
    appears under `path` in one step: `os.replace` (overwrite) or `os.link` (fails if `path`
    exists, so two processes creating the file at once cannot both win, and no reader ever
    sees it empty).
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: create in place, still O_EXCL and 0600
                _create_in_place(path, text)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _create_in_place(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(text + "\n")


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM payload codec: encodes with the current key, decodes with the key a payload names."""

    def __init__(self, keys: PayloadKeys) -> None:
        # One AESGCM object per key, built once: its key schedule is not rebuilt for every payload.
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current_id = keys.current_id
        self._current = self._ciphers[self._current_id]
        self._current_id_bytes = self._current_id.encode("ascii")

    @property
    def current_key_id(self) -> str:
        return self._current_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        # About 7 µs to seal and open a 2 KB payload: cheaper than any hop to a thread.
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        # AAD = key id: a payload relabelled with another key id fails authentication.
        sealed = self._current.encrypt(nonce, payload.SerializeToString(), self._current_id_bytes)
        return Payload(
            metadata={METADATA_ENCODING: ENCODING, METADATA_KEY_ID: self._current_id_bytes},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get(METADATA_ENCODING) != ENCODING:
            return payload  # never encrypted: recorded before encryption, or by another codec
        raw_id = payload.metadata.get(METADATA_KEY_ID)
        if raw_id is None:
            raise PayloadDecryptionError(f"encrypted payload has no {METADATA_KEY_ID!r} metadata")
        key_id = raw_id.decode("utf-8", errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKeyError(
                f"payload encrypted with key id {_shown(key_id)}, which is not among the configured "
                f"payload keys ({', '.join(self._ciphers)}); add that key to the key file",
                key_id,
            )
        if len(payload.data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadDecryptionError(f"encrypted payload (key id {_shown(key_id)}) is truncated", key_id)
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            opened = cipher.decrypt(nonce, sealed, raw_id)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"encrypted payload (key id {_shown(key_id)}) failed authentication: "
                "it was altered, or sealed by a different key under the same id",
                key_id,
            ) from None
        original = Payload()
        original.ParseFromString(opened)
        return original


def encrypted_data_converter(keys: PayloadKeys | None, *, encode_failures: bool = True) -> DataConverter:
    """The project's converter (pydantic models as JSON), sealed with `keys`; unchanged when None.

    `encode_failures` also moves failure messages and stack traces into an encrypted payload
    (the SDK leaves them readable by default, and they can quote user text); clients and workers
    with the codec read them back as usual. Every process that reads this namespace must use
    the same setting and keys: the API, the worker, the replayer, the CLI.
    """
    if keys is None:
        return pydantic_data_converter
    if encode_failures:
        return dataclasses.replace(
            pydantic_data_converter,
            payload_codec=EncryptionCodec(keys),
            failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
        )
    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(keys))
