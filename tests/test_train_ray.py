"""Real Ray Train runs on a tiny model: the 2-worker chain through jobs/adapt.py, the SimCSE
gather (2 workers = 1 worker with the combined batch), and resume after a failed run."""

import importlib.util
import json
from pathlib import Path

import pytest
from train_helpers import SENTENCES, fast_stage, one_process_embedder, save_tiny_causal_lm, write_corpus

from pipelines.train.config import ClusterSettings
from pipelines.train.data import mntp_blocks, simcse_sentences
from pipelines.train.mntp_loop import mntp_loop
from pipelines.train.simcse_loop import simcse_loop
from pipelines.train.trainer import build_trainer, run_stage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_train")
    return save_tiny_causal_lm(root / "model"), write_corpus(root / "data"), root


def _adapt_main(argv):
    from jobs import adapt

    return adapt.run(argv)  # the summary; `main` wraps it into exit codes


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_two_worker_chain_through_adapt_job(ray_session, tiny, monkeypatch):
    """MNTP then SimCSE, 2 workers each, then export: loss finite and falling, checkpoints on
    storage, an encoder that loads and encodes, adapters in peft format, a loss-curve PNG, and
    (--tracker mlflow) one finished MLflow run per stage holding the logged losses."""
    model, corpus, root = tiny
    config = root / "tiny.yaml"
    config.write_text(
        "profile: tiny\n"
        "mntp: {steps: 10, batch_size: 4, block_size: 32, lr: 0.02, mask_probability: 0.3, checkpoint_every: 5,"
        " lora: {r: 8, alpha: 16, dropout: 0.0}}\n"
        "simcse: {steps: 4, batch_size: 4, max_length: 32, lr: 0.005, checkpoint_every: 4, lora: {r: 4, alpha: 8}}\n"
        "cluster: {num_workers: 2, cpus_per_worker: 0.5}\n"
    )
    out = root / "adapt"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, not a developer's server
    tracker = ["--tracker", "mlflow"] if importlib.util.find_spec("mlflow") else []
    summary = _adapt_main(["--corpus", corpus, "--output", str(out), "--base-model", model, "--config", str(config),
                           *tracker])

    mntp = _records(out / "logs" / "mntp.jsonl")
    losses = [r["loss"] for r in mntp]
    assert [r["step"] for r in mntp] == list(range(1, 11))
    assert all(loss == loss and 0 < loss < 20 for loss in losses)  # finite
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    checkpoints = sorted(p for p in (out / "ray_results" / "adapt-mntp").glob("checkpoint_*") if p.is_dir())
    assert checkpoints and all((c / "adapter" / "adapter_model.safetensors").is_file() for c in checkpoints)

    assert (out / "adapters" / "mntp" / "adapter_config.json").is_file()
    assert (out / "adapters" / "simcse" / "adapter_config.json").is_file()
    assert (out / "loss_curves.png").stat().st_size > 1000
    from l2v_core import Encoder

    encoder = Encoder.from_pretrained(str(out / "encoder"))
    stages = [s["name"] for s in encoder.settings.stages]
    assert stages == ["bidirectional", "mntp", "simcse"] and encoder.settings.bidirectional
    assert all(s["wall_time_s"] > 0 for s in encoder.settings.stages[1:])
    assert encoder.encode(SENTENCES[:2]).shape == (2, 64)
    assert (out / "stages" / "mntp" / "encoder" / "l2v_config.json").is_file()
    assert summary["stages"][1]["num_workers"] == 2

    if tracker:  # read back by MLflow's own client from the default store, OUTPUT/mlruns
        from mlflow.tracking import MlflowClient

        assert summary["mlflow"] == {"tracking_uri": (out / "mlruns").as_uri(), "experiment": "adapt"}
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads a file store only with it
        client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
        runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("adapt").experiment_id])}
        assert {name: r.info.status for name, r in runs.items()} == {"mntp": "FINISHED", "simcse": "FINISHED"}
        history = sorted((m.step, m.value) for m in client.get_metric_history(runs["mntp"].info.run_id, "loss"))
        assert history == [(r["step"], pytest.approx(r["loss"])) for r in mntp]
        assert runs["simcse"].data.params["steps"] == "4" and runs["simcse"].data.params["num_workers"] == "2"


def _one_process_simcse_losses(model_dir, stage_dict, texts):
    """The same two SimCSE steps on one process with the whole batch, written out by hand."""
    from l2v_core import tokenize_texts
    from l2v_core.contrastive import set_attention_dropout, simcse_loss
    from pipelines.train.config import SimCSESettings
    from pipelines.train.simcse_loop import pad_right

    stage = SimCSESettings.model_validate(stage_dict)
    body, embedder, tokenizer, optimizer, scheduler = one_process_embedder(model_dir, stage)
    set_attention_dropout(body, 0.0)
    batch = tokenize_texts(tokenizer, texts, max_length=stage.max_length)
    ids, attention = pad_right(batch.input_ids, tokenizer.pad_token_id)
    pool_mask, _ = pad_right(batch.pool_mask, 0)
    losses = []
    for _ in range(stage.steps):
        both = embedder(ids.repeat(2, 1), attention.repeat(2, 1), pool_mask.repeat(2, 1))
        loss = simcse_loss(both[: len(ids)], both[len(ids):], scale=stage.scale)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_simcse_gather_two_workers_equal_one_worker_with_the_combined_batch(ray_session, tiny, strategy):
    """No dropout: the step-1 loss (the gather) and the step-2 loss (the gradient through the
    gather and DDP, or through FSDP's sharded weights) of 2 Ray Train workers x 4 sentences equal
    one process with all 8. FSDP also crashes after step 3 and resumes from its step-2
    checkpoint (sharded optimizer state restored from full tensors): step 3 must still match."""
    model, _, root = tiny
    (root / "eight").mkdir(exist_ok=True)
    (root / "eight" / "s.txt").write_text("\n".join(SENTENCES) + "\n")
    stage = fast_stage(steps=3, batch_size=8, max_length=32, lr=0.05, checkpoint_every=2, attention_dropout=0.0,
                       max_grad_norm=None, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    log = root / f"gather-{strategy}.jsonl"

    def fit(**extra):
        dataset = simcse_sentences(str(root / "eight"), model_path=model, max_length=32, split=False, min_chars=5)
        config = {"stage": stage, "model_path": model, "log_path": str(log), "strategy": strategy, **extra}
        return build_trainer(simcse_loop, config, ClusterSettings(num_workers=2, cpus_per_worker=0.5, max_failures=0),
                             name=f"gather-{strategy}", storage_path=str(root / "storage"),
                             datasets={"train": dataset}).fit()

    one_process = _one_process_simcse_losses(model, stage, SENTENCES)
    assert abs(one_process[1] - one_process[0]) > 1e-3  # the update did change the loss
    if strategy == "ddp":
        fit()
    else:
        with pytest.raises(Exception, match="fault injected"):
            fit(fault="simcse_step_3", fault_dir=str(root / f"faults-{strategy}"))
        assert fit().metrics["start_step"] == 2
    two_workers = [r["loss"] for r in _records(log)]
    assert two_workers == pytest.approx(one_process, abs=1e-4)


def test_rerun_with_the_same_name_resumes_from_the_checkpoint(ray_session, tiny):
    model, corpus, root = tiny
    storage = str(root / "storage")
    cluster = ClusterSettings(num_workers=1, cpus_per_worker=0.5, max_failures=0)
    stage = fast_stage(steps=4, block_size=32, checkpoint_every=2)

    def run(**extra):
        dataset = mntp_blocks(corpus, model_path=model, block_size=32)
        return run_stage(mntp_loop, {"stage": stage, "model_path": model, **extra}, cluster, name="resume",
                         storage_path=storage, datasets={"train": dataset})

    with pytest.raises(Exception, match="fault injected"):
        run(fault="mntp_step_3", fault_dir=str(root / "faults-resume"))  # crashes after the step-2 checkpoint
    result = run()
    assert result.metrics["start_step"] == 2 and result.metrics["step"] == 4
    with result.checkpoint.as_directory() as folder:
        assert [r["step"] for r in _records(Path(folder) / "steps.jsonl")] == [1, 2, 3, 4]
