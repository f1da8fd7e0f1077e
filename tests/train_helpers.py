"""Shared by the training tests: a tiny causal LM folder, a tiny corpus, fast stage settings."""

from __future__ import annotations

import os
from pathlib import Path

from l2v_core.testing import tiny_model_and_tokenizer

SENTENCES = [
    "A cat sits on the mat while the dog sleeps in the sun.",
    "Ray Data streams blocks of rows through actors on many nodes.",
    "Vectors are normalized so that inner product equals cosine similarity.",
    "The quick brown fox jumps over the lazy dog near the river.",
    "Bidirectional attention lets every token see every other token.",
    "Masked next token prediction reuses the language model head.",
    "Unicode text like cafe and naive words still tokenizes well here.",
    "A model adapted with contrastive learning embeds similar texts nearby.",
]

# STS-B-shaped pairs for the in-training evaluation (`LoopConfig.eval_pairs`): (first, second, gold)
EVAL_PAIRS = (tuple(SENTENCES[:4]), tuple(SENTENCES[4:]), (0.5, 4.0, 2.5, 1.0))


def shared_data_dir() -> Path:
    """../shared/data next to the repo, or $L2V_SHARED_DATA."""
    env = os.environ.get("L2V_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def save_tiny_causal_lm(folder: Path, family: str = "llama") -> str:
    model, tokenizer = tiny_model_and_tokenizer(family, with_lm_head=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_corpus(folder: Path, copies: int = 6) -> str:
    """A text file of paragraphs (two sentences per line)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{a} {b}" for a, b in zip(SENTENCES, SENTENCES[1:] + SENTENCES[:1])] * copies
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def fast_stage(**overrides) -> dict:
    """Stage settings small enough for a 2-core CPU test (LoRA r=4, short blocks)."""
    base = dict(steps=4, batch_size=4, lr=5e-3, checkpoint_every=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    base.update(overrides)
    return base


def one_process_embedder(model_dir: str, stage):
    """What the contrastive loops build, by hand on one process (the reference their Ray Train
    runs are compared with): a bidirectional body with a fresh LoRA (the stage's seed), the pooled
    embedder in train mode, the optimizer and schedule -> (body, embedder, tokenizer, optimizer,
    scheduler)."""
    import torch

    from l2v_core import enable_bidirectional, load_model
    from l2v_core.contrastive import PooledEmbedder
    from l2v_core.lora import apply_lora
    from pipelines.train.loop_tools import make_optimizer

    torch.manual_seed(stage.seed)
    body, tokenizer = load_model(model_dir, device="cpu")
    enable_bidirectional(body)
    lora_body = apply_lora(body, **stage.lora.model_dump())
    embedder = PooledEmbedder(lora_body, stage.pooling).train()
    optimizer, scheduler = make_optimizer(lora_body, stage)
    return body, embedder, tokenizer, optimizer, scheduler
