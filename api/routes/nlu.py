"""`/v1/nlu`: understanding alone, with no conversation and no side effects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ClientPrincipal, SettingsDep
from api.errors import ApiError, responses
from dialogue.model.api_models import TextToParse
from dialogue.model.contracts import NluResult
from dialogue.platform.bot import load_bot_cached

if TYPE_CHECKING:
    from dialogue.brain.nlu.parser import NluParser

router = APIRouter(prefix="/nlu", tags=["nlu"])


def _parser(request: Request, settings: SettingsDep) -> NluParser:
    # Built on first use: the API only loads the model (and imports the NLU's code, scikit-learn
    # with it) if someone asks it to parse.
    parser: NluParser | None = getattr(request.app.state, "nlu_parser", None)
    if parser is None:
        from dialogue.brain.nlu.parser import build_parser

        parser = build_parser(settings, load_bot_cached(settings.bot_path))
        request.app.state.nlu_parser = parser
    return parser


@router.post("/parse", responses=responses("invalid_text"))
async def parse_text(
    body: TextToParse, request: Request, settings: SettingsDep, _: ClientPrincipal
) -> NluResult:
    """Intent, ranking, entities and sentiment of a text, from the same model the worker uses."""
    if len(body.text) > settings.max_text_chars:
        raise ApiError("invalid_text", f"text is longer than {settings.max_text_chars} characters")
    parser = await run_in_threadpool(_parser, request, settings)
    return await run_in_threadpool(parser.parse, body.text)
