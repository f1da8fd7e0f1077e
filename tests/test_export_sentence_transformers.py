"""An exported encoder folder loaded by sentence-transformers gives l2v_core's vectors, or fails loudly.

Parity is measured as the per-row cosine between `SentenceTransformer(folder).encode(texts,
prompt_name=...)` and `Encoder.encode(texts, instruction=...)`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from l2v_core import Encoder, EncoderSettings
from l2v_core.st_format import POOLING_DIR, UNEXPRESSIBLE_TYPE, st_support
from l2v_core.testing import TINY_FAMILIES, tiny_model_and_tokenizer, tiny_tokenizer

st = pytest.importorskip("sentence_transformers", reason="sentence-transformers (the eval extra) is not installed")

TEXTS = [
    "A cat sits on the mat.",
    "The quick brown fox jumps over the lazy dog; 0123456789.",
    "Ray",
    "Vectors are normalized so that inner product equals cosine similarity. " * 12,  # over max_length: truncated
    "Unicode: café, naïve, über, 漢字, 😀.",
]
INSTRUCTIONS = {"sts": "Retrieve semantically similar text:", "query": "Given a question, retrieve passages:"}
NO_INSTRUCTION, WITH_INSTRUCTION = 0.9999, 0.999


def _whitespace_tokenizer(bos: bool = False):
    """A tokenizer whose instruction tokens end where the text's start (no trailing-space token),
    optionally adding a BOS token to every text (as Llama 3 or Mistral tokenizers do)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from l2v_core.testing import _CORPUS

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_CORPUS + list(INSTRUCTIONS.values()) + TEXTS, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[UNK]", "<eos>", "<bos>"], show_progress=False))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>", unk_token="[UNK]",
                                   bos_token="<bos>" if bos else None)


def _export(tmp_path, pooling, *, family="llama", tokenizer=None, name="enc"):
    model_tokenizer = tokenizer or tiny_tokenizer()
    model, _ = tiny_model_and_tokenizer(family, vocab_size=len(model_tokenizer))
    settings = EncoderSettings(pooling=pooling, max_length=48, instructions=INSTRUCTIONS, base_model=f"tiny-{family}")
    folder = Encoder(model, model_tokenizer, settings).save(tmp_path / name)
    # the reference is what a user of the folder gets: the tokenizer as reloaded (for some families
    # transformers reloads the tiny tokenizer with that family's own pre-tokenizer)
    return Encoder.from_pretrained(folder), folder


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def _st_model(folder):
    return st.SentenceTransformer(str(folder), device="cpu")


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "last_token", "first_token"])
def test_sentence_transformers_gives_the_encoders_vectors(tmp_path, pooling):
    encoder, folder = _export(tmp_path, pooling)
    model = _st_model(folder)
    for batch_size in (1, 3):  # 1: unpadded rows, where a skipped mask could fall back to causal attention
        got = model.encode(TEXTS, batch_size=batch_size, convert_to_numpy=True)
        cosine = _min_cosine(got, encoder.encode(TEXTS))
        print(f"\nparity {pooling} batch_size={batch_size} no instruction: min cosine {cosine:.7f}")
        assert cosine >= NO_INSTRUCTION, (pooling, batch_size)
    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    for name, prompt in prompts.items():
        got = model.encode(TEXTS, prompt_name=name, batch_size=3, convert_to_numpy=True)
        cosine = _min_cosine(got, encoder.encode(TEXTS, instruction=INSTRUCTIONS[name.lower()]))
        print(f"parity {pooling} prompt {name}: min cosine {cosine:.7f}")
        assert cosine >= WITH_INSTRUCTION, name
    if pooling in ("last_token", "first_token"):
        assert set(prompts) == {*INSTRUCTIONS, "STS"}  # the pooled position does not depend on the prompt
    else:  # byte-level BPE: a lone trailing space is a token of its own, so the prompt is left out, loudly
        assert prompts == {}
        with pytest.raises(ValueError, match="sts"):
            model.encode(TEXTS, prompt_name="sts")


def test_mean_with_instructions_where_the_tokenizer_allows_it(tmp_path):
    encoder, folder = _export(tmp_path, "mean", tokenizer=_whitespace_tokenizer())
    model = _st_model(folder)
    assert set(model.prompts) >= set(INSTRUCTIONS)
    for name, instruction in INSTRUCTIONS.items():
        got = model.encode(TEXTS, prompt_name=name, batch_size=2, convert_to_numpy=True)
        cosine = _min_cosine(got, encoder.encode(TEXTS, instruction=instruction))
        print(f"\nparity mean (whitespace tokenizer) prompt {name}: min cosine {cosine:.7f}")
        assert cosine >= WITH_INSTRUCTION
    assert _min_cosine(model.encode(TEXTS, batch_size=2), encoder.encode(TEXTS)) >= NO_INSTRUCTION


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean"])
def test_pooling_it_cannot_reproduce_fails_loudly(tmp_path, pooling):
    """A tokenizer that adds BOS to every text: l2v leaves BOS out of mean pooling, ST's Pooling cannot."""
    encoder, folder = _export(tmp_path, pooling, tokenizer=_whitespace_tokenizer(bos=True))
    modules = json.loads((folder / "modules.json").read_text())
    assert modules[1]["type"] == UNEXPRESSIBLE_TYPE
    with pytest.raises(Exception, match="trust_remote_code"):
        _st_model(folder)
    with pytest.raises(ValueError, match="cannot be reproduced by sentence-transformers"):
        st.SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    assert "Not loadable" in (folder / "README.md").read_text()
    # the folder still loads, exactly, with l2v_core
    np.testing.assert_allclose(Encoder.from_pretrained(folder).encode(TEXTS[:2]), encoder.encode(TEXTS[:2]), atol=1e-5)


def test_first_and_last_token_with_a_bos_tokenizer_still_match(tmp_path):
    encoder, folder = _export(tmp_path, "first_token", tokenizer=_whitespace_tokenizer(bos=True))
    assert st_support(encoder.tokenizer, encoder.settings).pooling_ok
    model = _st_model(folder)
    cosine = min(_min_cosine(model.encode(TEXTS, batch_size=3), encoder.encode(TEXTS)),
                 _min_cosine(model.encode(TEXTS, prompt_name="sts", batch_size=3),
                             encoder.encode(TEXTS, instruction=INSTRUCTIONS["sts"])))
    print(f"\nparity first_token (BOS tokenizer), with and without prompt: min cosine {cosine:.7f}")
    assert cosine >= WITH_INSTRUCTION


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_reloaded_folders_stay_bidirectional_in_plain_transformers_and_st(tmp_path, family):
    """The crux: `is_causal: false` in config.json must reach every attention call, also for one
    unpadded text (where transformers may skip the mask and fall back to a kernel's causal flag)."""
    from transformers import AutoModel

    from l2v_core import load_tokenizer

    # Gemma 2 has no SDPA attention in transformers: it is built, and loaded by plain transformers
    # and ST, with eager attention
    kwargs = {"attn_implementation": "eager"} if family == "gemma2" else {}
    model, _ = tiny_model_and_tokenizer(family, **kwargs)
    settings = EncoderSettings(max_length=48, base_model=f"tiny-{family}")
    folder = Encoder(model, tiny_tokenizer(), settings).save(tmp_path / family)
    assert json.loads((folder / "config.json").read_text())["is_causal"] is False
    body = AutoModel.from_pretrained(folder, **kwargs).eval()
    st_model = st.SentenceTransformer(str(folder), device="cpu", model_kwargs=kwargs)
    ids = torch.tensor([[5, 60, 70]])
    changed = ids.clone()
    changed[0, -1] = 90
    for loaded in (body, st_model[0].auto_model):
        with torch.no_grad():
            first = [loaded(input_ids=x).last_hidden_state[0, 0] for x in (ids, changed)]
        assert not torch.allclose(*first, atol=1e-6), f"{family}: the first token does not see the last one"
    reference = Encoder(body, load_tokenizer(folder), EncoderSettings.load(folder))
    got = st_model.encode(TEXTS[:3], batch_size=1)
    assert _min_cosine(got, reference.encode(TEXTS[:3])) >= NO_INSTRUCTION


def test_the_pooling_config_is_what_sentence_transformers_reads(tmp_path):
    _, folder = _export(tmp_path, "last_token")
    model = _st_model(folder)
    pooling = model[1]
    assert pooling.pooling_mode == "lasttoken" and pooling.include_prompt is True
    assert model.max_seq_length == 48 and type(model[2]).__name__ == "Normalize"
    assert "message" not in model[0].modality_config  # no chat template around plain text
    assert json.loads((folder / POOLING_DIR / "config.json").read_text())["embedding_dimension"] == encoder_dim(folder)


def encoder_dim(folder) -> int:
    return json.loads((folder / "config.json").read_text())["hidden_size"]


def test_mtebs_loading_path_gets_the_same_vectors(tmp_path):
    """mteb evaluates a local (unregistered) model through its SentenceTransformerEncoderWrapper
    (`mteb.get_model` knows registered names only), with the folder's prompts by prompt type."""
    mteb = pytest.importorskip("mteb", reason="mteb is not installed")
    from datasets import Dataset
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    encoder, folder = _export(tmp_path, "last_token")
    wrapper = SentenceTransformerEncoderWrapper(str(folder), device="cpu")
    metadata = mteb.get_task("SciFact").metadata
    for prompt_type, instruction in ((PromptType.document, None), (PromptType.query, INSTRUCTIONS["query"])):
        got = wrapper.encode(DataLoader(Dataset.from_dict({"text": TEXTS}), batch_size=2), task_metadata=metadata,
                             hf_split="test", hf_subset="default", prompt_type=prompt_type)
        cosine = _min_cosine(np.asarray(got), encoder.encode(TEXTS, instruction=instruction))
        print(f"\nmteb wrapper, last_token, {prompt_type.value}: min cosine {cosine:.7f}")
        assert cosine >= (NO_INSTRUCTION if instruction is None else WITH_INSTRUCTION)


@pytest.mark.slow
def test_default_model_parity(default_encoder, tmp_path):
    """The real SmolLM2 (its tokenizer has a chat template, which must stay off)."""
    encoder = Encoder(default_encoder.model, default_encoder.tokenizer,
                      default_encoder.settings.model_copy(update={"instructions": INSTRUCTIONS}))
    folder = encoder.save(tmp_path / "default")
    model = _st_model(folder)
    cosine = min(_min_cosine(model.encode(TEXTS, batch_size=b), encoder.encode(TEXTS)) for b in (1, 2))
    print(f"\nparity default model, mean pooling, no instruction: min cosine {cosine:.7f}")
    assert cosine >= NO_INSTRUCTION
    # its byte-level BPE makes the instruction's trailing space a token of its own: no prompts. An
    # unknown name raises; "query" and "document" are sentence-transformers 6's own empty defaults.
    assert "sts" not in model.prompts and model.prompts.get("query", "") == ""
    with pytest.raises(ValueError, match="sts"):
        model.encode(TEXTS[:1], prompt_name="sts")


def test_an_instruction_that_fills_max_length_is_not_offered(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    settings = EncoderSettings(max_length=16, instructions={"long": "Retrieve " * 40, "sts": INSTRUCTIONS["sts"]})
    support = st_support(tokenizer, settings)
    assert "long" in support.skipped_prompts and support.pooling_ok
    Encoder(model, tokenizer, settings).save(tmp_path / "enc")  # saving does not raise
