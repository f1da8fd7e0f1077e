"""The Encoder: a decoder-only LLM used as a text encoder (LLM2Vec)."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .batching import DEFAULT_MAX_PADDING, plan_micro_batches
from .bidirectional import set_attention_mode
from .loading import backbone_of, files_sha256, load_model, resolve_model_path, weights_sha256
from .packing import default_row_tokens, plan_passes, pool_packed
from .pooling import pool
from .settings import CONFIG_FILE, EncoderSettings
from .tokenize import TokenizedBatch, tokenize_texts

logger = logging.getLogger(__name__)

_UNSET = object()
DEFAULT_BATCH_TOKENS = 16384


class Encoder:
    """Turns texts into vectors with a (usually bidirectional) decoder model.

    Build one with `Encoder.from_pretrained(...)`, or wrap a model already in memory with
    `Encoder(model, tokenizer, settings)` (the training stages do this).
    """

    def __init__(self, model, tokenizer, settings: EncoderSettings | None = None, *, source_dir: str | None = None):
        self.settings = settings or EncoderSettings()
        self.model = backbone_of(model)
        self.tokenizer = tokenizer
        set_attention_mode(self.model, bidirectional=self.settings.bidirectional)
        self.model.eval()
        self._source_dir = source_dir  # where the weights were read from, for a cheap file hash
        self._weights_sha256: str | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        bidirectional: bool = _UNSET,
        pooling: str = _UNSET,
        max_length: int = _UNSET,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> Encoder:
        """Load an encoder. `None` is the default model (SmolLM2-135M-Instruct, offline).

        Defaults: bidirectional=True, pooling="mean", max_length=512 (capped by the model's
        positions). An exported encoder folder restores its own `l2v_config.json`; keyword
        arguments given explicitly override it.
        """
        path = resolve_model_path(name_or_path)
        saved = EncoderSettings.load(path) if (Path(path) / CONFIG_FILE).is_file() else None
        settings = saved or EncoderSettings(base_model=str(name_or_path) if name_or_path else "default")
        overrides = {k: v for k, v in dict(bidirectional=bidirectional, pooling=pooling, max_length=max_length).items()
                     if v is not _UNSET}
        settings = EncoderSettings.model_validate({**settings.model_dump(), **overrides})
        model, tokenizer = load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and settings.max_length > limit:
            logger.warning("max_length %d exceeds the model's %d positions; using %d",
                           settings.max_length, limit, limit)
            settings.max_length = limit
        source = path if Path(path).is_dir() else None
        return cls(model, tokenizer, settings, source_dir=source)

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:
            if self._source_dir and any(Path(self._source_dir).glob("*.safetensors")):
                self._weights_sha256 = files_sha256(self._source_dir)
            else:
                self._weights_sha256 = weights_sha256(self.model)
        return self._weights_sha256

    def identity(self) -> dict:
        """Everything that decides the vectors: equal identities give equal vectors for equal text."""
        return {
            "model": self.settings.base_model,
            "weights_sha256": self.weights_sha256,
            "tokenizer_sha256": hashlib.sha256(_tokenizer_json(self.tokenizer).encode()).hexdigest(),
            "pooling": self.settings.pooling,
            "max_length": self.settings.max_length,
            "bidirectional": self.settings.bidirectional,
            "dim": self.dim,
        }

    # ---------------------------------------------------------------- encoding
    def tokenize(self, texts: Sequence[str], instruction: str | None = None) -> TokenizedBatch:
        """CPU-only tokenization (no model needed); feed the result to `encode_tokenized`."""
        return tokenize_texts(self.tokenizer, texts, instruction, self.settings.max_length)

    def encode(
        self,
        texts: Sequence[str],
        instruction: str | None = None,
        *,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        normalize: bool = True,
        show_progress: bool = False,
        max_padding: float = DEFAULT_MAX_PADDING,
        packed: bool = False,
    ) -> np.ndarray:
        """Embed `texts` -> float32 array (n, dim), rows in input order.

        Texts are sorted by token length and cut into micro-batches of at most `batch_tokens`
        padded tokens whose padding stays under `max_padding` (see `l2v_core.batching`).

        An empty list gives a (0, dim) array. Empty or whitespace-only texts and non-strings raise
        (they have nothing to embed; see `check_texts`). Texts over `max_length` tokens are truncated
        and counted in a warning.

        `packed=True` lays several texts end to end in each row instead of padding them (attention
        stays inside each text; see `l2v_core.packing`): the same vectors up to rounding, fewer
        computed positions. Opt-in until the GPU check (docs/gpu.md) has measured it on CUDA.
        """
        batch = self.tokenize(texts, instruction)
        n_truncated = sum(batch.truncated)
        if n_truncated:
            logger.warning("%d of %d texts truncated to max_length=%d tokens",
                           n_truncated, len(batch), self.settings.max_length)
        return self.encode_tokenized(batch, batch_tokens=batch_tokens, normalize=normalize, show_progress=show_progress,
                                     max_padding=max_padding, packed=packed)

    @torch.inference_mode()
    def encode_tokenized(
        self, batch: TokenizedBatch, *, batch_tokens: int = DEFAULT_BATCH_TOKENS, normalize: bool = True,
        show_progress: bool = False, micro_batches: list[list[int]] | None = None,
        max_padding: float = DEFAULT_MAX_PADDING, packed: bool = False,
    ) -> np.ndarray:
        """Embed pre-tokenized texts. Sorts by length, cuts micro-batches so that padded
        (rows x longest) stays within `batch_tokens` and padding under `max_padding`, and
        restores the input order. `micro_batches` (row groups) replaces that plan, e.g. to
        compare batching strategies. `packed=True`: packed passes instead (see `encode`)."""
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        if len(batch) == 0:
            return out
        if packed and micro_batches is not None:
            raise ValueError("micro_batches plans padded passes; pass packed=False with it")
        if packed:
            passes = plan_passes(batch.n_tokens, batch_tokens, default_row_tokens(self.model, batch_tokens))
            micro_batches = [[i for row in rows for i in row] for rows in passes]
            forwards = [functools.partial(self._forward_packed, batch, rows) for rows in passes]
        else:
            if micro_batches is None:
                micro_batches = plan_micro_batches(batch.n_tokens, batch_tokens, max_padding)
            forwards = [functools.partial(self._forward, batch, rows) for rows in micro_batches]
        progress = _progress(len(batch), show_progress)
        for rows, forward in zip(micro_batches, forwards):
            vectors = forward()
            if normalize:
                vectors = F.normalize(vectors, dim=-1)
            out[rows] = vectors.cpu().numpy()
            progress.update(len(rows))
        progress.close()
        return out

    def _forward(self, batch: TokenizedBatch, rows: list[int]) -> torch.Tensor:
        """One padded forward pass over `rows` -> float32 (len(rows), dim). Right padding keeps
        every real token at its unpadded position, whatever the positional scheme."""
        longest = max(batch.n_tokens[r] for r in rows)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        pooled = torch.zeros((len(rows), longest), dtype=torch.long)
        for j, r in enumerate(rows):
            n = batch.n_tokens[r]
            ids[j, :n] = torch.tensor(batch.input_ids[r])
            attention[j, :n] = 1
            pooled[j, :n] = torch.tensor(batch.pool_mask[r])
        device = self.device
        hidden = self.model(input_ids=ids.to(device), attention_mask=attention.to(device)).last_hidden_state
        return pool(hidden.float(), pooled.to(device), self.settings.pooling, attention.to(device))

    def _forward_packed(self, batch: TokenizedBatch, rows: list[list[int]]) -> torch.Tensor:
        """One packed forward pass over the texts of `rows` -> float32 (texts, dim)."""
        return pool_packed(self.model, batch, rows, pad_id=self.tokenizer.pad_token_id,
                           pooling=self.settings.pooling, bidirectional=self.settings.bidirectional)

    # ---------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike, *, eval_report: str | os.PathLike | dict | None = None) -> Path:
        """Write safetensors weights, the tokenizer, `l2v_config.json`, the sentence-transformers
        files (`l2v_core.st_format`) and a model card `README.md` (with `eval_report`'s table:
        a `jobs/evaluate.py` report, as a path or a dict) to `path`."""
        from .model_card import write_model_card
        from .st_format import write_st_files

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        self.settings.save(path)
        write_st_files(path, self.settings, self.tokenizer, self.dim)
        write_model_card(path, eval_report=eval_report)
        return path


def _progress(total: int, enabled: bool):
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="encode", unit="text")

    class _Silent:
        def update(self, n):  # noqa: D401 - trivial
            pass

        def close(self):
            pass

    return _Silent()


def _tokenizer_json(tokenizer) -> str:
    """The tokenizer's definition as JSON, without the truncation state that tokenizing with
    `truncation=True` leaves on the Rust tokenizer: an encoder's identity must not change
    because it has encoded something (a service reusing a warm encoder compares identities)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return ""
    from tokenizers import Tokenizer

    fresh = Tokenizer.from_str(backend.to_str())
    fresh.no_truncation()
    return fresh.to_str()
