"""Training data: records, loaders with file:line validation, and tokenised batches.

Records (`rlhf.data.records`): `SFTExample`, `Preference`, `Ranking`,
`Label` (KTO) and `Group` (every response to one prompt with its
comparisons: the reward model's unit). Prompts are lists of chat messages.

Loaders read `.jsonl`, `.json` (an array of rows), `.csv` and `.parquet`
files, or a `datasets` hub name when no such path exists. Every row is
validated before anything is returned (and before torch is imported); the
first bad one raises `UserError` with one line naming file, line and field
(`prefs.jsonl:17: "chosen" is empty`, `"rejected" is null`). The line is the
one an editor shows (a CSV's header is line 1); Parquet names the row
number. A text field longer than `RLHF_MAX_FIELD_CHARS` characters
(1,000,000 by default) is refused, never cut (`rlhf.data.read`).

Row formats, detected per row:

- SFT: `{prompt, response}`, `{prompt, completion}`, `{messages: [...]}` (the
  last message is the assistant's response, the ones before it the prompt),
  `{instruction, input?, output}` and Alpaca seed tasks
  `{instruction, instances: [{input, output}]}` (instruction, then the input
  after a blank line, as one user message), `{text}` (raw text, loss on every
  token), and any preference row (its chosen or top-ranked response). Raw
  text and demonstrations train differently, so one file holds one kind: the
  first row of the other kind is refused with its line.
- Preferences: `{prompt, chosen, rejected, margin?}` (TRL; chosen and
  rejected are strings or a list with one assistant message); implicit
  prompt `{chosen, rejected}`: message lists share the prompt messages, and
  Anthropic HH-RLHF transcripts (`\\n\\nHuman: ...\\n\\nAssistant: ...`) give
  the shared text up to the last `\\n\\nAssistant:`, parsed into messages
  (Human -> user, Assistant -> assistant). `margin` is a number >= 0.
- Rankings: `{prompt, responses: [r0, ..., rK-1], ranking: [...]}`, K >= 2,
  `ranking` a permutation of 0..K-1 listing response indices best first:
  `ranking: [2, 0, 1]` says r2 > r0 > r1, i.e. the pairs (2, 0), (2, 1), (0, 1).
- KTO: `{prompt, completion, label: true|false}`; a preference row gives one
  true and one false row.

A prompt is a string (one user message) or a list of `{role, content}`
messages with roles system, user or assistant, ending with a user message.
"""

from rlhf.data.batches import (IGNORE, LabelBatcher, PairBatcher, RewardBatcher, SFTBatcher, collate_packed,
                               epoch_order, kl_partners, pack_rows, pad_id, pad_sequences)
from rlhf.data.load import load_groups, load_labels, load_pairs, load_preferences, load_prompts, load_sft
from rlhf.data.read import read_rows
from rlhf.data.records import (Group, Label, Message, Preference, Ranking, SFTExample, as_groups, as_labels,
                               as_pairs, prompt_key, split)
from rlhf.data.tokens import encode_all

__all__ = [
    "IGNORE", "Group", "Label", "LabelBatcher", "Message", "PairBatcher", "Preference", "Ranking", "RewardBatcher",
    "SFTBatcher", "SFTExample", "as_groups", "as_labels", "as_pairs", "collate_packed", "encode_all", "epoch_order",
    "kl_partners", "load_groups", "load_labels", "load_pairs", "load_preferences", "load_prompts", "load_sft",
    "pack_rows", "pad_id", "pad_sequences", "prompt_key", "read_rows", "split",
]
