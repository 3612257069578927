"""Bot versions: what serving a published version costs a turn, beside the deployment's own bot, in the
same run; and how long a worker takes to load a version from the store.

One embedded stack (`dialogue up`, the default bot). A copy of the demo bot with another greeting is
published (`dialogue bot publish --no-tests`) and released as a canary for 50% of new conversations,
the demo's own files as the stable version: by the hash of their ids, half the conversations are
answered by the worker's own bot, half by the version it loaded from the store. Turns alternate between
the two sides round by round, so both meet the same machine noise. Reports p50/p90/p99 of each side and
the ratio of the p50s (the goal: within 5%).

Then, in this process, a worker's `BotRuntimes` loads the published version from the stack's store
into a fresh folder (unpack, read the definition, load the NLU model, build the activities) `--loads`
times: the time a conversation's first turn on a version waits, once per worker.

    .venv/bin/python -m bench.bot_versions [--rounds 100] [--loads 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.stack import EmbeddedStack, default_bot
from bench.streaming import RESULTS, header, percentiles
from dialogue.platform.bot_versions import BotRef, folder_ref
from dialogue.platform.db import BotRelease
from dialogue.platform.releases import choose
from dialogue.platform.settings import Settings

DEMO = Settings().bot_path
TEXTS = ["hello", "how much does express shipping cost?", "can I pay with PayPal?", "thanks"]
CONVERSATIONS = 10
"""Conversations per side; turns go round them."""
WARM_UP_ROUNDS = 5


def changed_copy(folder: Path) -> Path:
    """The demo bot with another greeting, in `folder`: a version of its own."""
    shutil.copytree(DEMO.parent, folder, ignore=shutil.ignore_patterns("knowledge", "__pycache__"))
    raw = yaml.safe_load((folder / "bot.yaml").read_text())
    for intent in raw["intents"]:
        if intent["name"] == "greet":
            intent["responses"] = ["Hello from the published version of the Northwind assistant."]
    (folder / "bot.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "bot.yaml"


def dialogue(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dialogue", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dialogue {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


def sides(stable: BotRef, canary: BotRef, run_id: str) -> dict[str, list[str]]:
    """Conversation ids on each side of a 50% canary, `CONVERSATIONS` each."""
    release = BotRelease(
        bot=stable.bot,
        stable=stable.version,
        canary=canary.version,
        canary_percent=50,
        updated_at=datetime.now(UTC),
        updated_by="bench",
    )
    found: dict[str, list[str]] = {"own": [], "published": []}
    n = 0
    while min(len(ids) for ids in found.values()) < CONVERSATIONS:
        conversation = f"bench-{run_id}-{n}"
        side = "published" if choose(release, f"default/{conversation}") == canary.version else "own"
        if len(found[side]) < CONVERSATIONS:
            found[side].append(conversation)
        n += 1
    return found


async def turns(
    stack: EmbeddedStack, ids: dict[str, list[str]], rounds: int, canary: BotRef
) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {"own": [], "published": []}
    async with httpx.AsyncClient(base_url=stack.api, headers=stack.headers, timeout=60) as http:
        for index in range(WARM_UP_ROUNDS + rounds):
            text = TEXTS[index % len(TEXTS)]
            order = ("own", "published") if index % 2 == 0 else ("published", "own")
            for side in order:
                conversation = ids[side][index % CONVERSATIONS]
                started = time.perf_counter()
                reply = await http.post(f"/v1/conversations/{conversation}/turns", json={"text": text})
                elapsed = (time.perf_counter() - started) * 1000
                reply.raise_for_status()
                on_canary = reply.json()["lineage"]["bot_version"] == canary.version
                assert on_canary == (side == "published"), reply.json()["lineage"]
                if index >= WARM_UP_ROUNDS:
                    series[side].append(elapsed)
    return series


def load_times(env: dict[str, str], canary: BotRef, loads: int) -> list[float]:
    """Milliseconds a worker's `BotRuntimes` takes to load the version into a fresh folder."""
    from worker import build_turn_activities

    stack_data = Path(env["DIALOGUE_DATA_DIR"])
    times = []
    for _ in range(loads):
        with tempfile.TemporaryDirectory(prefix="dialogue-bench-load-") as scratch:
            values: dict[str, Any] = {
                "data_dir": Path(scratch),
                "database_url": f"sqlite:///{stack_data / 'dialogue.platform.db'}",
            }
            if "DIALOGUE_NLU_MODEL_DIR" in env:
                values["nlu_model_dir"] = env["DIALOGUE_NLU_MODEL_DIR"]
            settings = Settings.model_validate(values)
            runtimes = build_turn_activities(settings).bots
            started = time.perf_counter()
            runtimes.load(str(canary))
            times.append((time.perf_counter() - started) * 1000)
    return times


async def run(rounds: int, loads: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="dialogue-bench-bot-") as scratch,
        EmbeddedStack(**default_bot()) as stack,
    ):
        env = stack.env | {"DIALOGUE_API_KEY": stack.key}
        own = folder_ref(DEMO)
        published = changed_copy(Path(scratch) / "v2")
        dialogue(env, "bot", "publish", str(DEMO.parent), "--no-tests")
        dialogue(env, "bot", "publish", str(published.parent), "--no-tests")
        canary = folder_ref(published)
        dialogue(env, "bot", "release", own.bot, own.version)
        dialogue(env, "bot", "release", canary.bot, canary.version, "--percent", "50")
        await asyncio.sleep(3)  # the API reads releases every 2 s
        series = await turns(stack, sides(own, canary, uuid.uuid4().hex[:6]), rounds, canary)
        loaded = await asyncio.to_thread(load_times, env, canary, loads)
    stats = {name: percentiles(values) for name, values in series.items()}
    return {
        **header("bot_versions", bot="the default bot (trained NLU, hybrid retrieval, grounded answers)"),
        "rounds": rounds,
        "texts": TEXTS,
        "ms": stats,
        "published_over_own_p50": round(stats["published"]["p50"] / stats["own"]["p50"], 3),
        "published_over_own_p90": round(stats["published"]["p90"] / stats["own"]["p90"], 3),
        "version_load_ms": percentiles(loaded) if len(loaded) > 1 else {"p50": round(loaded[0], 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.loads))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bot_versions.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
