"""Bots as versioned artifacts: a bot's folder named by the digest of its files, packed with its trained
NLU model into the store (`bot_version`), read back, unpacked where a worker serves it, and compared.

A version is content-addressed: the same files make the same version on any machine, so publishing twice
stores nothing new and a worker's own bot (the deployment's `DIALOGUE_BOT_PATH`) is known by the same
name as its published copy. The knowledge folder is not part of it (the knowledge base is the
deployment's, in the store, and a version records the revision it was tested with).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from dialogue.platform.bot import BotDefinition, load_bot
from dialogue.platform.db import BotVersion

BOT_FILE = "bot.yaml"
MODEL_FOLDER = "model"
"""Where the trained NLU model is in an unpacked version."""
MAX_BOT_BYTES = 64 * 1024 * 1024
"""A bot folder larger than this is refused: it is read whole into the store and into each worker."""
SKIPPED_NAMES = frozenset({"__pycache__", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"})


class BotVersionError(ValueError):
    """A folder that cannot be published, or a release that cannot be made."""


class NotFound(BotVersionError):
    """No such version of the bot (or no release of it)."""


@dataclass(frozen=True)
class BotRef:
    """A bot and one of its versions: `demo@3f2a9c1b4d5e`."""

    bot: str
    version: str

    def __str__(self) -> str:
        return f"{self.bot}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> BotRef:
        bot, sep, version = text.partition("@")
        if not sep or not bot or not version:
            raise BotVersionError(f"{text!r} is not BOT@VERSION")
        return cls(bot, version)


def bot_files(bot_path: Path, bot: BotDefinition) -> dict[str, Path]:
    """The files a version is made of, by their path in it: the bot file (as `bot.yaml`), the files it
    names (its Python tools, tables, NLU data) and its conversation tests (the `tests` folder beside it).
    Other files of the folder (evaluation sets, notes) are not the bot's; neither is its knowledge folder."""
    folder = bot_path.parent.resolve()
    named = [bot.python_tools, *bot.tables.values()]
    if bot.nlu is not None:
        named += [bot.nlu.train, bot.nlu.validation, bot.nlu.test, *bot.nlu.reviewed]
    files: dict[str, Path] = {BOT_FILE: bot_path}
    for relative in filter(None, named):
        path = (folder / relative).resolve()
        if not path.is_relative_to(folder):
            raise BotVersionError(f"{relative}: outside the bot's folder {folder}")
        if path.is_file():
            files[path.relative_to(folder).as_posix()] = path
    tests = folder / "tests"
    for path in sorted(tests.rglob("*")) if tests.is_dir() else []:
        if path.is_file() and not any(part in SKIPPED_NAMES or part.startswith(".") for part in path.parts):
            files[path.relative_to(folder).as_posix()] = path
    size = sum(path.stat().st_size for path in files.values())
    if size > MAX_BOT_BYTES:
        raise BotVersionError(f"{folder}: {size} bytes of files, more than {MAX_BOT_BYTES}")
    return files


def file_digests(files: dict[str, Path]) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(files.items())}


def content_address(digests: dict[str, str]) -> str:
    """The version of a folder whose files have these digests: the same files, the same version."""
    listing = "".join(f"{name}\0{digest}\n" for name, digest in sorted(digests.items()))
    return hashlib.sha256(listing.encode()).hexdigest()[:12]


def folder_ref(bot_path: Path) -> BotRef:
    """The version a bot file would be published as: what the API and a worker serving it from files call
    it. A bot that names files outside its folder cannot be published; it is known by its file alone."""
    bot = load_bot(bot_path)
    try:
        files = bot_files(bot_path, bot)
    except BotVersionError:
        files = {BOT_FILE: bot_path}
    return BotRef(bot.name, content_address(file_digests(files)))


def pack(files: dict[str, Path], model_folder: Path | None) -> bytes:
    """A gzipped tar of the files and, under `model/`, the model folder's files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, path in sorted(files.items()):
            archive.add(path, arcname=name, recursive=False)
        if model_folder is not None and model_folder.is_dir():
            for path in sorted(model_folder.rglob("*")):
                if path.is_file():
                    archive.add(path, arcname=f"{MODEL_FOLDER}/{path.relative_to(model_folder).as_posix()}")
    return buffer.getvalue()


def unpack(archive: bytes, folder: Path) -> Path:
    """The archive's files under `folder` (made whole or not at all: unpacked beside it, then renamed);
    an existing `folder` is taken as it is (a version never changes). Returns its bot file."""
    if (folder / BOT_FILE).is_file():
        return folder / BOT_FILE
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, no `..`, no links out
        try:
            staging.rename(folder)
        except OSError:  # another process unpacked it first: theirs is the same
            if not (folder / BOT_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / BOT_FILE


def store_version(
    engine: Engine,
    bot: BotDefinition,
    digests: dict[str, str],
    archive: bytes,
    *,
    definition: str,
    actor: str,
    details: dict[str, Any],
) -> tuple[BotVersion, bool]:
    """Store a version unless it is there; returns it and whether it was stored now."""
    version = content_address(digests)
    with Session(engine, expire_on_commit=False) as session:
        existing = session.get(BotVersion, (bot.name, version))
        if existing is not None:
            return existing, False
        row = BotVersion(
            bot=bot.name,
            version=version,
            created_at=datetime.now(UTC),
            created_by=actor,
            definition=definition,
            manifest={"files": digests} | details,
            archive=archive,
        )
        session.add(row)
        session.commit()
        return row, True


def get_version(engine: Engine, bot: str, version: str, *, archive: bool = False) -> BotVersion | None:
    """A version by its full digest, or by a prefix of it that names only one (`demo@3f2a`); its archive
    (megabytes: the files and the model) is read only when asked for."""
    options = [] if archive else [defer(BotVersion.archive)]  # type: ignore[arg-type]  # a column of the table
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(BotVersion, (bot, version), options=options)
        if row is not None or len(version) >= 12:
            return row
        found = session.exec(
            select(BotVersion)
            .options(*options)
            .where(BotVersion.bot == bot, col(BotVersion.version).startswith(version, autoescape=True))
            .limit(2)
        ).all()
        return found[0] if len(found) == 1 else None


def list_versions(engine: Engine, bot: str | None = None) -> list[BotVersion]:
    """Every version (of `bot`), newest first, their archives not read."""
    with Session(engine, expire_on_commit=False) as session:
        unread = defer(BotVersion.archive)  # type: ignore[arg-type]  # a column of the table
        query = select(BotVersion).options(unread).order_by(col(BotVersion.created_at).desc())
        if bot is not None:
            query = query.where(BotVersion.bot == bot)
        return list(session.exec(query).all())


def require_version(engine: Engine, bot: str, version: str, *, archive: bool = False) -> BotVersion:
    row = get_version(engine, bot, version, archive=archive)
    if row is None:
        raise NotFound(f"no version {version} of bot {bot}")
    return row


def diff_versions(old: BotVersion, new: BotVersion) -> dict[str, Any]:
    """What changed from one version to another: files added, removed and changed, with a unified diff of
    each changed text file (the trained models differ with their data; their versions are named)."""
    old_files: dict[str, str] = old.manifest.get("files", {})
    new_files: dict[str, str] = new.manifest.get("files", {})
    changed = sorted(
        name for name in old_files.keys() & new_files.keys() if old_files[name] != new_files[name]
    )
    old_texts, new_texts = _texts(old.archive, changed), _texts(new.archive, changed)
    diffs = {
        name: "".join(
            difflib.unified_diff(
                old_texts.get(name, "").splitlines(keepends=True),
                new_texts.get(name, "").splitlines(keepends=True),
                f"{old.bot}@{old.version}/{name}",
                f"{new.bot}@{new.version}/{name}",
            )
        )
        for name in changed
    }
    return {
        "from": f"{old.bot}@{old.version}",
        "to": f"{new.bot}@{new.version}",
        "added": sorted(new_files.keys() - old_files.keys()),
        "removed": sorted(old_files.keys() - new_files.keys()),
        "changed": changed,
        "diffs": diffs,
        "nlu_model": {
            "from": old.manifest.get("nlu_model"),
            "to": new.manifest.get("nlu_model"),
        },
    }


def _texts(archive: bytes, names: list[str]) -> dict[str, str]:
    wanted = set(names)
    texts: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                stream = tar.extractfile(member)
                if stream is None:
                    continue
                try:
                    texts[member.name] = stream.read().decode("utf-8")
                except UnicodeDecodeError:
                    texts[member.name] = "(binary)\n"
    return texts
