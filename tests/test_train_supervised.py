"""The supervised stage on Ray Train: 2 workers, cached gradients, through jobs/adapt.py."""

import importlib.util
import json
from pathlib import Path

import pytest
from train_helpers import SENTENCES, one_process_embedder, save_tiny_causal_lm

pytestmark = pytest.mark.slow

INSTRUCTION = "Find:"
# 8 usable pairs (4 per worker) and one without a positive (skipped). Rows 0 and 1 share a query
# (false negatives for each other); rows 2, 5 and 6 carry no hard negative.
PAIRS = [
    {"query": SENTENCES[0], "positive": "A cat is on the mat.", "negative": "No animal is here."},
    {"query": SENTENCES[0], "positive": "A dog sleeps outside.", "negative": "It is night."},
    {"query": SENTENCES[1], "positive": "Ray Data moves rows.", "negative": None},
    {"query": SENTENCES[2], "positive": "Cosine is an inner product.", "negative": "Vectors are never normalized."},
    {"query": SENTENCES[3], "positive": "A fox jumps over a dog.", "negative": "The fox sleeps."},
    {"query": SENTENCES[4], "positive": "Tokens see each other.", "negative": None},
    {"query": SENTENCES[5], "positive": "The LM head predicts tokens.", "negative": ""},
    {"query": SENTENCES[6], "positive": "Unicode works.", "negative": "Nothing tokenizes."},
    {"query": SENTENCES[7], "positive": None, "negative": "skipped row"},
]


def _one_process_losses(model_dir, stage_dict, rows):
    """The same steps on one process with the whole batch and no cached gradients."""
    from pipelines.train.config import SupervisedSettings
    from pipelines.train.pairs import tokenize_pairs
    from pipelines.train.supervised_loop import pair_tensors, pairs_loss

    stage = SupervisedSettings.model_validate(stage_dict)
    _, embedder, tokenizer, optimizer, scheduler = one_process_embedder(model_dir, stage)
    usable = [r for r in rows if r["query"] and r["positive"]]
    batch = tokenize_pairs({k: [r[k] for r in usable] for k in ("query", "positive", "negative")}
                           | {"instruction": [None] * len(usable)},
                           model_path=model_dir, max_length=stage.max_length, instruction=stage.instruction)
    ids, attention, pool, keys = pair_tensors(batch.to_pydict(), tokenizer.pad_token_id)
    losses = []
    for _ in range(stage.steps):
        loss = pairs_loss(keys, stage.scale)(embedder(ids, attention, pool))
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_two_workers_with_cached_gradients_equal_one_process_and_export(ray_session, tmp_path):
    """2 Ray Train workers x 4 pairs, cached gradients in chunks of 3 texts: the step-1 loss
    (negatives gathered over both workers, false negatives masked) and the step-2 loss (the
    update through GradCache, the gather and DDP) equal one process with all 8 pairs; the
    exported encoder loads and records the instruction as its query instruction."""
    model = save_tiny_causal_lm(tmp_path / "model")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    stage = {"steps": 2, "batch_size": 8, "lr": 0.05, "warmup_steps": 0, "max_grad_norm": None, "max_length": 32,
             "checkpoint_every": 2, "chunk_size": 3, "instruction": INSTRUCTION,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"profile": "tiny", "stages": ["supervised"], "export_max_length": 64,
                                  "supervised": stage, "cluster": {"num_workers": 2, "cpus_per_worker": 0.5}}))
    out = tmp_path / "adapt"
    from jobs import adapt

    tracker = ["--tracker", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    summary = adapt.run(["--pairs", str(pairs), "--output", str(out), "--base-model", model, "--config", str(config),
                         *tracker])

    records = [json.loads(line) for line in (out / "logs" / "supervised.jsonl").read_text().splitlines()]
    one_process = _one_process_losses(model, stage, PAIRS)
    assert abs(one_process[1] - one_process[0]) > 1e-3  # the update did change the loss
    assert [r["loss"] for r in records] == pytest.approx(one_process, abs=1e-4)
    history = summary["stages"][-1]
    assert (history["pairs_rows"], history["pairs_kept"], history["pairs_skipped"]) == (9, 8, 1)

    from l2v_core import Encoder

    encoder = Encoder.from_pretrained(str(Path(out) / "encoder"))
    assert encoder.settings.instructions["query"] == INSTRUCTION
    assert encoder.settings.max_length == 64
    assert [s["name"] for s in encoder.settings.stages] == ["bidirectional", "supervised"]
    assert encoder.encode(["a query"], INSTRUCTION).shape == (1, 64)

    if tracker:  # the event file, read by tensorboard's own reader
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / "tensorboard" / "supervised")).Reload()
        assert {"supervised/loss", "supervised/lr", "supervised/grad_norm",
                "supervised/tokens_per_s_per_worker"} <= set(events.Tags()["scalars"])
        assert [e.value for e in events.Scalars("supervised/loss")] == pytest.approx(one_process, abs=1e-4)


def test_step_line_shows_step_of_total_and_an_eta(capsys):
    from pipelines.train.loop_tools import StepLog

    log = StepLog("demo", 0, total=100)
    log.step(step=1, loss=1.0, step_time_s=2.0)
    log.step(step=2, loss=0.9, step_time_s=2.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[demo] step 1/100 ") and lines[0].endswith("eta 3m18s")  # 99 steps x 2 s
    assert "step 2/100" in lines[1] and " eta " in lines[1]


def test_a_crashed_supervised_run_resumes_and_ends_as_an_uninterrupted_one(ray_session, tmp_path):
    """Resume of the supervised stage (cached gradients): a worker that dies after the step-2
    checkpoint makes Ray Train restart the group from that checkpoint; the run carries on at step 3
    and its four step losses and final LoRA weights equal those of a run that never crashed: the
    LoRA weights, the optimizer and schedule state and the position in the data all come back.
    Dropout is off: after a resume the dropout draws start afresh from `stream_seed(seed, rank,
    step)` by design (loop_tools)."""
    import torch
    from safetensors.torch import load_file

    from pipelines.train.config import ClusterSettings, SupervisedSettings
    from pipelines.train.loop_tools import ADAPTER_DIR
    from pipelines.train.pairs import supervised_pairs
    from pipelines.train.supervised_loop import supervised_loop
    from pipelines.train.trainer import run_stage

    model = save_tiny_causal_lm(tmp_path / "model")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS * 2))  # 16 usable pairs: 4 steps of 4
    stage = {"steps": 4, "batch_size": 4, "lr": 0.05, "warmup_steps": 0, "max_length": 32, "checkpoint_every": 2,
             "chunk_size": 3, "seed": 3, "instruction": INSTRUCTION,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    dataset, _ = supervised_pairs(str(pairs), model_path=model, stage=SupervisedSettings.model_validate(stage))

    def run(name, **extra):
        cluster = ClusterSettings(num_workers=1, cpus_per_worker=0.5, max_failures=1)
        result = run_stage(supervised_loop, {"stage": stage, "model_path": model, **extra}, cluster, name=name,
                           storage_path=str(tmp_path / "storage"), datasets={"train": dataset})
        with result.checkpoint.as_directory() as folder:
            folder = Path(folder)
            losses = [json.loads(line)["loss"] for line in (folder / "steps.jsonl").read_text().splitlines()]
            return result.metrics, losses, load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))

    _, straight_losses, straight_weights = run("straight")
    metrics, resumed_losses, resumed_weights = run("crashed", fault="supervised_step_3",
                                                   fault_dir=str(tmp_path / "faults"))
    assert metrics["start_step"] == 2 and metrics["step"] == 4  # the restarted group began at the checkpoint
    assert len(set(straight_losses)) == 4  # every step trained on a different batch
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-5, abs=1e-6)
    assert resumed_weights.keys() == straight_weights.keys()
    for key, weight in straight_weights.items():
        torch.testing.assert_close(resumed_weights[key], weight, rtol=1e-5, atol=1e-6, msg=key)
