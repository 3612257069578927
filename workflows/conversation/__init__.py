"""The conversation workflow, one module per role (see `workflow.py` for the map)."""

from workflows.conversation.decisions import MAX_UNRECORDED, RECENT_TURNS
from workflows.conversation.options import RECORD_INLINE, RECORD_UNTIL_DONE
from workflows.conversation.replies import FALLBACK_TEXT, NOT_RUN
from workflows.conversation.workflow import ConversationWorkflow

__all__ = [
    "FALLBACK_TEXT",
    "MAX_UNRECORDED",
    "NOT_RUN",
    "RECENT_TURNS",
    "RECORD_INLINE",
    "RECORD_UNTIL_DONE",
    "ConversationWorkflow",
]
