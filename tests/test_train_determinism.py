"""Same config and seed -> the same training: each stage runs twice through Ray Train (2 workers,
DDP) on a tiny model; the step losses and the LoRA weights of the two runs must agree. Every random
source is in play: LoRA init, MNTP masks, LoRA and attention dropout, the data split over workers,
the seeded shuffle and the SimCSE batches. The second run also evaluates on STS-B-shaped pairs every
2 steps (`eval_every`): watching a run must not change it."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import EVAL_PAIRS, fast_stage, save_tiny_causal_lm, write_corpus

from pipelines.train.config import ClusterSettings
from pipelines.train.data import mntp_blocks, simcse_sentences
from pipelines.train.loop_tools import ADAPTER_DIR
from pipelines.train.mntp_loop import mntp_loop
from pipelines.train.simcse_loop import simcse_loop
from pipelines.train.trainer import build_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    return save_tiny_causal_lm(root / "model"), write_corpus(root / "data", copies=12), root


def _fit(loop, stage: dict, dataset, model: str, root: Path, name: str, *, evaluate: bool = False):
    """-> (step losses, LoRA weights); `evaluate` adds the in-training evaluation every 2 steps."""
    log = root / f"{name}.jsonl"
    if evaluate:
        stage = {**stage, "eval_every": 2}
    config = {"stage": stage, "model_path": model, "log_path": str(log), "eval_pairs": EVAL_PAIRS if evaluate else ()}
    cluster = ClusterSettings(num_workers=2, cpus_per_worker=0.5, max_failures=0)
    result = build_trainer(loop, config, cluster, name=name, storage_path=str(root / "storage"),
                           datasets={"train": dataset}).fit()
    with result.checkpoint.as_directory() as folder:
        weights = load_file(str(Path(folder) / ADAPTER_DIR / "adapter_model.safetensors"))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum("stsb_dev" in r for r in records) == (2 if evaluate else 0)  # evaluated at steps 2 and 4
    return [r["loss"] for r in records if "loss" in r], weights


def _assert_same(first, second):
    (losses_a, weights_a), (losses_b, weights_b) = first, second
    assert len(losses_a) == 4 and len(set(losses_a)) > 1  # it trained, and the draws vary from step to step
    assert losses_b == pytest.approx(losses_a, rel=1e-5, abs=1e-6)
    assert weights_a.keys() == weights_b.keys() and any("lora_A" in k for k in weights_a)
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(w.abs().sum() > 0 for k, w in weights_a.items() if "lora_B" in k)  # B moved off its zero init


@pytest.mark.parametrize("stage_name", ["mntp", "simcse"])
def test_same_seed_gives_the_same_losses_and_lora_weights(ray_session, tiny, stage_name):
    model, corpus, root = tiny
    lora = {"r": 4, "alpha": 8, "dropout": 0.1}  # dropout on: its draws must be seeded too
    if stage_name == "mntp":
        stage = fast_stage(steps=4, batch_size=4, block_size=16, mask_probability=0.3, checkpoint_every=4, lora=lora,
                           seed=7)

        def dataset():
            return mntp_blocks(corpus, model_path=model, block_size=16)
        loop = mntp_loop
    else:
        stage = fast_stage(steps=4, batch_size=4, max_length=32, checkpoint_every=4, split_sentences=True, lora=lora,
                           attention_dropout=0.3, seed=7)

        def dataset():
            return simcse_sentences(corpus, model_path=model, max_length=32, split=True, min_chars=10)
        loop = simcse_loop
    first = _fit(loop, stage, dataset(), model, root, f"{stage_name}-a")
    second = _fit(loop, stage, dataset(), model, root, f"{stage_name}-b", evaluate=True)
    _assert_same(first, second)
