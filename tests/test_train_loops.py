"""Each stage's loop for a few steps on a tiny model, in-process (ScalingConfig(num_workers=0))."""

import json

import pytest
from train_helpers import fast_stage, save_tiny_causal_lm, write_corpus

from pipelines.train.config import ClusterSettings
from pipelines.train.data import mntp_blocks, simcse_sentences
from pipelines.train.mntp_loop import mntp_loop
from pipelines.train.simcse_loop import pad_right, simcse_loop
from pipelines.train.trainer import build_trainer, check_storage


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("loops")
    return save_tiny_causal_lm(root / "model"), write_corpus(root / "data"), root


def _fit(loop, stage, model, dataset, root, name):
    log = root / f"{name}.jsonl"
    trainer = build_trainer(loop, {"stage": stage, "model_path": model, "log_path": str(log)},
                            ClusterSettings(num_workers=0), name=name, storage_path=str(root / "storage"),
                            datasets={"train": dataset})
    result = trainer.fit()
    return result, [json.loads(line) for line in log.read_text().splitlines()]


def test_mntp_loop_in_process(ray_session, tiny):
    model, corpus, root = tiny
    stage = fast_stage(steps=3, block_size=32, mask_probability=0.3)
    result, records = _fit(mntp_loop, stage, model, mntp_blocks(corpus, model_path=model, block_size=32), root, "mntp")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["tokens_per_s_per_worker"] > 0 for r in records)
    assert result.metrics["step"] == 3 and result.metrics["start_step"] == 0


def test_simcse_loop_in_process(ray_session, tiny):
    model, corpus, root = tiny
    stage = fast_stage(steps=3, max_length=32, split_sentences=True)
    dataset = simcse_sentences(corpus, model_path=model, max_length=32, split=True, min_chars=10)
    result, records = _fit(simcse_loop, stage, model, dataset, root, "simcse")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0 < r["loss"] < 10 for r in records)


def test_cpu_speed_options_top_layers_and_bf16_autocast(ray_session, tiny):
    """The settings of the CPU profiles: LoRA on the last layer only, forward under bf16 autocast."""
    model, corpus, root = tiny
    stage = fast_stage(steps=2, max_length=32, autocast_bf16=True, lora={"r": 4, "alpha": 8, "top_layers": 1})
    dataset = simcse_sentences(corpus, model_path=model, max_length=32, split=True, min_chars=10)
    result, records = _fit(simcse_loop, stage, model, dataset, root, "simcse_fast")
    assert [r["step"] for r in records] == [1, 2] and all(0 < r["loss"] < 10 for r in records)


def test_pad_right():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_storage_must_be_given_or_shared():
    with pytest.raises(ValueError, match="--storage-path"):
        check_storage(None, explicit=False)
    assert check_storage("s3://bucket/runs", explicit=True) == "s3://bucket/runs"


def test_loop_config_refuses_unknown_keys_and_a_fault_without_its_folder():
    from pipelines.train.loop_config import LoopConfig

    config = LoopConfig.from_dict({"stage": {"steps": 1}, "model_path": "m", "merge": ["a"]})
    assert config.merge == ("a",) and LoopConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"fail_at_step.*known keys"):
        LoopConfig.from_dict({"stage": {}, "model_path": "m", "fail_at_step": 3})
    with pytest.raises(ValueError, match="fault_dir"):
        LoopConfig(stage={}, model_path="m", fault="mntp_step_3")


def test_in_training_stsb_dev_evaluation_logs_scores_and_leaves_training_unchanged(ray_session, tiny):
    """eval_every=2 over 3 steps: a dev score after step 2 and after the last, every step's loss
    equal to the same run without evaluation (it draws no random numbers, runs without dropout),
    and the loss-curve PNG takes the scores on a second axis."""
    from train_helpers import EVAL_PAIRS

    from pipelines.train.plot import plot_losses

    model, corpus, root = tiny
    blocks = mntp_blocks(corpus, model_path=model, block_size=32)
    plain = fast_stage(steps=3, block_size=32, mask_probability=0.3, lora={"r": 4, "alpha": 8, "dropout": 0.1})
    _, without = _fit(mntp_loop, plain, model, blocks, root, "mntp_no_eval")
    log = root / "mntp_eval.jsonl"
    trainer = build_trainer(mntp_loop, {"stage": {**plain, "eval_every": 2}, "model_path": model,
                                        "log_path": str(log), "eval_pairs": EVAL_PAIRS},
                            ClusterSettings(num_workers=0), name="mntp_eval", storage_path=str(root / "storage"),
                            datasets={"train": blocks})
    trainer.fit()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    scores = [(r["step"], r["stsb_dev"]) for r in records if "stsb_dev" in r]
    assert [step for step, _ in scores] == [2, 3] and all(-100 <= s <= 100 for _, s in scores)
    assert [r["loss"] for r in records if "loss" in r] == [r["loss"] for r in without]
    png = plot_losses({"mntp": log}, root / "curves.png")
    assert png is not None and png.stat().st_size > 1000
