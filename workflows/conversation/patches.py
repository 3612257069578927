"""The names of the workflow's patches (`workflow.patched`): each changed the commands a conversation
records, so runs recorded before it replay without it (tests/histories holds one run of each).

A change whose new commands follow from an activity's recorded result needs no patch: the result replays
as it was recorded, and the run goes the way it went. Since `respond_here` may write the turn itself
(`RespondedHere.recorded`, recorded history v10-record-here), a turn whose reply it wrote has no
`record_turn` step; in every run recorded before, the result has no `recorded`, and the step follows."""

TURN_DEADLINE = "turn-deadline"
"""Since this patch, a turn's steps run under a deadline timer; past it the user gets the fallback."""
CONTINUE_AS_NEW = "continue-as-new"
"""Since this patch, a run continues as new after `turns_per_run` messages or when Temporal suggests it."""
HOLD = "handoff-holds-conversation"
"""Since this patch, a handoff pauses the bot until handback (before, it only set a flag)."""
LOCAL_STEPS = "local-steps"
"""Since this patch, the steps that take milliseconds on the worker (understand, retrieve, a reply made
without a model, record_turn) are local activities: they run inside the turn's workflow task, each
saving a round trip through the server's task queue (~18 ms a step on the embedded dev server,
bench/turn_latency.py). A reply from an LLM stays the regular `generate` activity."""
LEAN_TURN = "lean-turn"
"""Since this patch, a turn costs the server less work: retrieval runs after `understand`, and only when
the reply is made from the knowledge base (not for a greeting or a flow's question), taking the utterance's
vector that `understand` computed; one idle timer runs per quiet spell, not one re-armed at every turn
(two timer commands fewer a turn); a new conversation's index row is written inline by a local activity
like the turns' (a regular activity cost a round trip through the server's task queue)."""
ONE_LOCAL_STEP = "one-local-step"
"""Since this patch, a turn's understanding, retrieval and reply (when made without a tool, the agent or a
model) are one local activity, `respond_here`, instead of three: two local-activity round trips and two
workflow activations fewer a turn. If it fails, the turn runs the steps one by one, as before."""
QUERY_REWRITE = "llm-query-rewrite"
"""Since this patch, a follow-up may be made standalone by the `rewrite_query` activity before retrieval."""
LEAN_COMMANDS = "lean-commands"
"""Since this patch, a run records one patch marker (this one) in place of the ones above, which it takes as
applied, and writes a search attribute only when the value operators filter on changes (`details.Listing`):
a new conversation's first turn recorded 5 patch markers and 7 search-attribute upserts, and every turn one
upsert, each about a bare update's worth of the dev server's CPU (bench/command_costs.py)."""
MODEL_MEMORY_NOTES = "model-memory-notes"
"""Since this patch, after a turn a model answered for an end user who consents to memory, the model reads
the turn for facts to keep (`note_memory`, a regular activity after the reply, not in its way). Asked with
`workflow.patched` itself (a run takes the patches before LEAN_COMMANDS as applied, not this one), and only
when such a turn happens: a run without one records no marker."""
CHANNEL_DELIVERY = "channel-delivery"
"""Since this patch, a conversation held on a messaging platform (`ConversationInput.channel`) delivers its
replies and a person's messages there, each a `deliver` activity (`outbox.Outbox`). Asked with
`workflow.patched` itself, and only in such a conversation: no other run records a marker."""
REMINDERS = "reminders"
"""Since this patch, a conversation may hold reminders (`remind`): durable timers that send a message later.
Asked with `workflow.patched` itself when a reminder is scheduled: a run without one records no marker."""
