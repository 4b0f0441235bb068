"""What the `lite-whisper` commands print besides their progress bars and results.

A normal run prints our warnings (problems the user can act on) and no library warnings: each one we met was a
symptom of a call we made, and those calls are fixed (evaluation and sensitivity pass generate the attention
mask and one length limit), except `LIBRARY_NOISE`, which no call of ours can avoid. `--verbose` adds our info
messages (e.g. the repairs import-ct2 makes to a shipped vocabulary) and lets `LIBRARY_NOISE` through.
"""

import logging
import re

# transformers 5.x: Whisper's generate hands its own generation config to the generic generate together with
# suppress_tokens and begin_suppress_tokens (its workaround for speculative decoding), so the generic generate
# logs this deprecation once per process however generate was called, even with no arguments at all. Dropped only
# when those two are all it names: the same message about arguments of ours still shows.
LIBRARY_NOISE_LOGGER = "transformers.generation.utils"
LIBRARY_NOISE = re.compile(r"Passing `generation_config` together with generation-related arguments=\(\{(.*?)\}\)")
LIBRARY_NOISE_ARGUMENTS = {"suppress_tokens", "begin_suppress_tokens"}


class WhisperGenerateNoise(logging.Filter):
    """Drops the deprecation that transformers' own Whisper generate triggers (LIBRARY_NOISE)."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = LIBRARY_NOISE.match(record.getMessage())
        return not (match and {name.strip(" '\"") for name in match.group(1).split(",")} == LIBRARY_NOISE_ARGUMENTS)


def configure(verbose: bool = False) -> None:
    """Set up what a command prints on stderr (see the module docstring); safe to call again."""
    ours = logging.getLogger("lite_whisper_convert")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)  # the root logger has no handler in a CLI run, so nothing prints twice
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    library = logging.getLogger(LIBRARY_NOISE_LOGGER)
    for existing in [item for item in library.filters if isinstance(item, WhisperGenerateNoise)]:
        library.removeFilter(existing)
    if not verbose:
        library.addFilter(WhisperGenerateNoise())
