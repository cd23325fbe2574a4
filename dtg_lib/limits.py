"""Size limits on one request, shared by every face (HTTP, CLI) so they agree.

Each limit bounds the work or memory one request can ask for; none is close to
what a real prompt needs.
"""

from __future__ import annotations

# Expansions per request; each one runs the model for up to max_rounds rounds.
MAX_ITEMS = 64
# Largest image width or height a prompt may be written for.
MAX_SIZE = 16384
# Characters per prompt: a long real prompt has a few thousand; the engine reads every tag.
MAX_PROMPT_CHARS = 50_000
# Characters per natural-language prompt (TIPO models): a TIPO model reads 1,024 tokens
# in all, so a longer text could not fit its context anyway.
MAX_NL_PROMPT_CHARS = 4_000

# Bytes of one HTTP request body. A full request carries MAX_ITEMS prompts of
# MAX_PROMPT_CHARS characters each, and as many natural-language prompts of
# MAX_NL_PROMPT_CHARS; a JSON encoder that escapes non-ASCII text
# (Python's json.dumps does by default) spends up to 6 bytes ("\uXXXX") on a
# character, and 1 MiB covers the seeds, sizes and settings (ban lists included).
# 64 x (50,000 + 4,000) x 6 + 1 MiB = 21,784,576 bytes (about 20.8 MiB).
JSON_BYTES_PER_CHAR = 6
SETTINGS_ROOM_BYTES = 1 << 20
MAX_BODY_BYTES = (
    MAX_ITEMS * (MAX_PROMPT_CHARS + MAX_NL_PROMPT_CHARS) * JSON_BYTES_PER_CHAR + SETTINGS_ROOM_BYTES
)

# Server-side time limit of one HTTP upsample request, in seconds: a full
# request of MAX_ITEMS expansions on a CPU runs for minutes, so this is generous;
# past it the work is cancelled and the client gets a 503.
REQUEST_TIMEOUT_S = 600.0
