"""The sentence-transformers files of an exported encoder folder (this module owns that format).

`SentenceTransformer(folder)` must give the vectors of `Encoder.from_pretrained(folder)`, or fail
loudly. The folder gets:

- `modules.json`: Transformer -> Pooling -> Normalize (sentence-transformers' own modules);
- `sentence_bert_config.json`: plain-text input only (`modality_config` without "message"), so
  sentence-transformers >= 5.4 does not wrap texts in the model's chat template; `max_seq_length`;
- `1_Pooling/config.json`: l2v's pooling mode in sentence-transformers' terms;
- `config_sentence_transformers.json`: the encoder's instructions as named prompts.

Attention stays bidirectional without any code here: the saved `config.json` carries
`is_causal: false`, which transformers >= 5 passes to every attention call (tested per family).

What sentence-transformers' stock modules cannot reproduce (see `st_support`):
- `mean` and `weighted_mean` when the tokenizer adds special tokens (BOS/EOS) to every text: l2v
  leaves them out of the pool, sentence-transformers pools every non-prompt token;
- `weighted_mean` with an instruction: sentence-transformers keeps the prompt's positions in the
  weights (l2v weighs the text's tokens 1..n);
- `mean` with an instruction whose tokens, measured alone, do not end where the text's tokens start
  (byte-level BPE (as in SmolLM2) turns the trailing space into a token of its own, which in the
  full text belongs to the first word): sentence-transformers would leave the first word out.
A pooling mode it cannot reproduce gets a Pooling entry of type `UnexpressiblePooling` (below):
sentence-transformers refuses to import it without trust_remote_code=True, and with it the class
raises a clear error. A named prompt it cannot reproduce is left out of the prompts, so
`encode(..., prompt_name=name)` raises there; the model card lists it. (Not for the names `query`
and `document`: sentence-transformers >= 6 fills those with an empty prompt, so there they give
the vector without instruction.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .settings import EncoderSettings
from .tokenize import tokenize_texts

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
TRANSFORMER_CONFIG_FILE = "sentence_bert_config.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
ST_FILES = (MODULES_FILE, ST_CONFIG_FILE, TRANSFORMER_CONFIG_FILE, POOLING_DIR, NORMALIZE_DIR)

# l2v pooling -> (sentence-transformers pooling_mode, include_prompt). first/last token read one
# position, which a prompt does not move: the prompt stays in (l2v never skips it there either).
_ST_POOLING = {
    "mean": ("mean", False),
    "weighted_mean": ("weightedmean", False),
    "last_token": ("lasttoken", True),
    "first_token": ("cls", True),
}
_PROBE_TEXTS = ("The cat sat on the mat.", "2024: prices rose 3%.", "über café", "(a) first item")
UNEXPRESSIBLE_TYPE = "l2v_core.st_format.UnexpressiblePooling"
# mteb picks a sentence-transformers prompt by task type ("STS"), prompt type ("query", "document")
# or task name: an instruction named for a task type is also written under mteb's spelling.
_MTEB_ALIASES = {"sts": "STS"}


@dataclass(frozen=True)
class STSupport:
    """What the sentence-transformers files can reproduce for one encoder."""

    pooling_ok: bool
    reason: str | None = None  # why the pooling is not reproducible (when not pooling_ok)
    prompts: dict[str, str] = field(default_factory=dict)  # name -> ST prompt (instruction + " ")
    skipped_prompts: dict[str, str] = field(default_factory=dict)  # name -> why it was left out


def st_prompt(instruction: str) -> str:
    """The sentence-transformers prompt that gives the model l2v's input (`tokenize.py`'s format)."""
    return f"{instruction.strip()} "


def _adds_special_tokens(tokenizer) -> bool:
    text = _PROBE_TEXTS[0]
    with_specials = tokenizer(text, add_special_tokens=True)["input_ids"]
    return with_specials != tokenizer(text, add_special_tokens=False)["input_ids"]


def _st_prompt_length(tokenizer, prompt: str) -> int:
    """How sentence-transformers measures a prompt: its tokens alone, less a trailing special token."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return len(ids) - (1 if ids and ids[-1] in tokenizer.all_special_ids else 0)


def _prompt_reproducible(tokenizer, instruction: str, max_length: int) -> bool:
    """True when, for every probe text, the tokens l2v leaves out of the pool are exactly the
    leading tokens sentence-transformers counts as the prompt."""
    length = _st_prompt_length(tokenizer, st_prompt(instruction))
    try:
        batch = tokenize_texts(tokenizer, list(_PROBE_TEXTS), instruction, max_length)
    except ValueError:  # the instruction alone fills max_length: nothing to pool in either library
        return False
    for mask in batch.pool_mask:
        first_pooled = mask.index(1)
        if first_pooled != length or not all(mask[first_pooled:]):
            return False
    return True


def st_support(tokenizer, settings: EncoderSettings) -> STSupport:
    """Which parts of `settings` sentence-transformers' stock modules reproduce for `tokenizer`."""
    mode = settings.pooling
    if mode in ("mean", "weighted_mean") and _adds_special_tokens(tokenizer):
        return STSupport(False, f"pooling {mode!r}: the tokenizer adds special tokens (BOS/EOS) to every text, which "
                                f"l2v leaves out of the pool and sentence-transformers' Pooling cannot")
    prompts, skipped = {}, {}
    for name, instruction in settings.instructions.items():
        if mode == "weighted_mean":
            skipped[name] = "weighted_mean: sentence-transformers keeps the prompt's positions in the weights"
        elif mode == "mean" and not _prompt_reproducible(tokenizer, instruction, settings.max_length):
            skipped[name] = ("the instruction's tokens, measured alone, do not end where the text's tokens start "
                             "(a trailing-space token): sentence-transformers would drop the text's first token")
        else:
            prompts[name] = st_prompt(instruction)
            if name in _MTEB_ALIASES and _MTEB_ALIASES[name] not in settings.instructions:
                prompts[_MTEB_ALIASES[name]] = st_prompt(instruction)
    return STSupport(True, None, prompts, skipped)


def write_st_files(folder: str | Path, settings: EncoderSettings, tokenizer, dim: int) -> STSupport:
    """Write the sentence-transformers files into an encoder folder; returns what they reproduce."""
    folder = Path(folder)
    support = st_support(tokenizer, settings)
    st_mode, include_prompt = _ST_POOLING[settings.pooling]
    pooling_type = "sentence_transformers.models.Pooling" if support.pooling_ok else UNEXPRESSIBLE_TYPE
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": pooling_type},
        {"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"},
    ]
    _write_json(folder / MODULES_FILE, modules)
    _write_json(folder / TRANSFORMER_CONFIG_FILE, {
        "transformer_task": "feature-extraction",
        # text only: no "message" modality, so no chat template around plain texts
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
        "max_seq_length": settings.max_length,
        "do_lower_case": False,
    })
    pooling = {"embedding_dimension": dim, "pooling_mode": st_mode, "include_prompt": include_prompt}
    if not support.pooling_ok:
        pooling["l2v_pooling"], pooling["reason"] = settings.pooling, support.reason
    (folder / POOLING_DIR).mkdir(exist_ok=True)
    _write_json(folder / POOLING_DIR / "config.json", pooling)
    (folder / NORMALIZE_DIR).mkdir(exist_ok=True)
    _write_json(folder / ST_CONFIG_FILE, {
        "model_type": "SentenceTransformer",
        "prompts": support.prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    return support


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


class UnexpressiblePooling:
    """Stands in modules.json for a pooling that sentence-transformers cannot reproduce: loading it
    raises, so no tool silently gets other vectors than `l2v_core.Encoder`."""

    def __init__(self, *args, **kwargs):
        self._refuse(kwargs.get("subfolder"), args[0] if args else None)

    @classmethod
    def load(cls, model_name_or_path=None, *args, subfolder: str = POOLING_DIR, **kwargs):
        cls._refuse(subfolder, model_name_or_path)

    @staticmethod
    def _refuse(subfolder, folder):
        reason = ""
        if folder and Path(folder, subfolder or POOLING_DIR, "config.json").is_file():
            reason = json.loads(Path(folder, subfolder or POOLING_DIR, "config.json").read_text()).get("reason", "")
        raise ValueError(
            f"this l2v encoder's pooling cannot be reproduced by sentence-transformers "
            f"({reason or 'see its README.md'}); "
            f"load it with l2v_core: Encoder.from_pretrained({str(folder or 'FOLDER')!r}).encode(texts)"
        )
