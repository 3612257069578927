"""Who may ask about an end user (`/v1/users/{user}/…`): a server's key, about any user of its tenant; an
end user's token, about its own user only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from api.errors import ApiError
from dialogue.model.contracts import USER_PATTERN
from dialogue.security.identity import Principal

UserPath = Annotated[
    str, Path(pattern=USER_PATTERN, description="The end user, as the integrator knows them.")
]


def refuse_another_user(principal: Principal, user: str) -> None:
    if principal.user is not None and principal.user != user:
        raise ApiError("forbidden", "an end user's token asks about its own user only")
