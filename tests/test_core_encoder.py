import json

import numpy as np
import pytest
import torch

from l2v_core import Encoder, EncoderSettings
from l2v_core.testing import tiny_model_and_tokenizer

TEXTS = [
    "A cat sits on the mat.",
    "The quick brown fox jumps over the lazy dog; 0123456789.",
    "Ray",
    "Vectors are normalized so that inner product equals cosine similarity. " * 3,
    "Unicode: café, naïve, über, 漢字, 😀.",
]


@pytest.fixture
def encoder(tiny_llama):
    model, tokenizer = tiny_llama
    return Encoder(model, tokenizer, EncoderSettings(max_length=64))


def test_encode_shape_dtype_order_and_norm(encoder):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # input order: each row equals that text encoded alone (batch of one, no padding)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(vectors[i], encoder.encode([text])[0], atol=1e-5)


def test_tiny_token_budget_gives_the_same_vectors(encoder):
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_tokens=8), encoder.encode(TEXTS), atol=1e-5)


def test_instruction_changes_the_vector_but_is_not_pooled(encoder):
    plain = encoder.encode(TEXTS[:2])
    instructed = encoder.encode(TEXTS[:2], "Retrieve semantically similar text:")
    assert not np.allclose(plain, instructed, atol=1e-4)


def test_empty_list_gives_an_empty_array(encoder):
    out = encoder.encode([])
    assert out.shape == (0, encoder.dim) and out.dtype == np.float32


@pytest.mark.parametrize(
    "bad,error", [([""], ValueError), ([None], TypeError), ("text", TypeError), ([1.5], TypeError)]
)
def test_bad_input_is_a_clear_error(encoder, bad, error):
    with pytest.raises(error, match="texts"):
        encoder.encode(bad)


def test_text_far_over_max_length_is_truncated(encoder, caplog):
    long = "word " * 5000
    out = encoder.encode([long, "short"])
    assert out.shape == (2, encoder.dim) and np.isfinite(out).all()
    assert "truncated" in caplog.text
    # truncation keeps the first max_length tokens: equal to a text cut at that point
    np.testing.assert_allclose(out[0], encoder.encode(["word " * 200])[0], atol=1e-5)


def test_save_and_from_pretrained_round_trip_with_overrides(encoder, tmp_path):
    encoder.settings.instructions = {"query": "Find:"}
    encoder.settings.pooling = "weighted_mean"
    encoder.save(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / "l2v_config.json").read_text())
    assert saved["pooling"] == "weighted_mean" and saved["instructions"] == {"query": "Find:"}
    assert list((tmp_path / "enc").glob("*.safetensors")) and not list((tmp_path / "enc").glob("*.bin"))

    loaded = Encoder.from_pretrained(tmp_path / "enc")
    assert loaded.settings.pooling == "weighted_mean" and loaded.settings.max_length == 64
    np.testing.assert_allclose(loaded.encode(TEXTS), encoder.encode(TEXTS), atol=1e-5)
    assert loaded.identity()["weights_sha256"] == Encoder.from_pretrained(tmp_path / "enc").identity()["weights_sha256"]

    overridden = Encoder.from_pretrained(tmp_path / "enc", pooling="mean", bidirectional=False)
    assert overridden.settings.pooling == "mean" and not overridden.settings.bidirectional
    assert overridden.identity() != loaded.identity()


def test_causal_and_bidirectional_encoders_differ(tiny_llama):
    model, tokenizer = tiny_llama
    bi = Encoder(model, tokenizer, EncoderSettings(bidirectional=True)).encode(TEXTS)
    causal = Encoder(model, tokenizer, EncoderSettings(bidirectional=False)).encode(TEXTS)
    assert not np.allclose(bi, causal, atol=1e-4)


def test_wraps_a_causal_lm_by_its_body():
    model, tokenizer = tiny_model_and_tokenizer("qwen2", with_lm_head=True)
    encoder = Encoder(model, tokenizer, EncoderSettings())
    assert type(encoder.model).__name__ == "Qwen2Model"
    assert encoder.encode(["hello"]).shape == (1, 64)


def test_unknown_model_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked in .*local folder.*Hugging Face cache"):
        Encoder.from_pretrained(str(tmp_path / "no-such-model"))


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Encoder.from_pretrained(tmp_path)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="pooling"):
        EncoderSettings(pooling="max")
    with pytest.raises(ValueError, match="extra"):
        EncoderSettings(poolin="mean")


def test_dtype_and_device_defaults_to_float32_on_cpu(tiny_encoder_dir):
    encoder = Encoder.from_pretrained(tiny_encoder_dir)
    assert encoder.dtype == torch.float32 and encoder.device.type == "cpu"


def test_identity_does_not_change_once_the_encoder_has_encoded(tiny_encoder_dir):
    # tokenizing with truncation=True leaves truncation state on the Rust tokenizer; the identity
    # (compared by the query service and by incremental runs) must not see it
    encoder = Encoder.from_pretrained(tiny_encoder_dir)
    before = encoder.identity()
    encoder.encode(["a first text", "and a second, longer one"])
    assert encoder.identity() == before
