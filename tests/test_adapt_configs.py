"""Every shipped YAML validates; typos and bad values are errors; the CLI overrides apply."""

from pathlib import Path

import pytest

from pipelines.train.config import AdaptConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))


def _adapt_module():
    from jobs import adapt

    return adapt


def test_there_are_quick_and_paper_profiles():
    assert {"quick", "paper"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_validates_and_starts_with_its_launch_command(path):
    cfg = load_config(path)
    assert cfg.profile == path.stem
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and "jobs/adapt.py" in first_line


def test_paper_profile_is_the_reference_recipe():
    cfg = load_config(next(p for p in CONFIGS if p.stem == "paper"))
    m, s = cfg.mntp, cfg.simcse
    assert (m.mask_probability, m.mask_token, m.block_size, m.batch_size, m.steps, m.lr) == (
        0.2, "_", 512, 32, 1000, 5e-5
    )
    assert (s.batch_size, s.max_length, s.lr, s.scale, s.steps, s.attention_dropout) == (
        128, 128, 3e-5, 20.0, 1000, 0.3
    )
    assert (m.lora.r, m.lora.alpha, m.lora.dropout) == (16, 32, 0.05)


def test_a_typo_is_an_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: x\nmntp:\n  stpes: 10\n")
    with pytest.raises(ValueError, match=r"(?s)bad.yaml.*stpes"):
        load_config(bad)


def test_batch_must_split_over_workers():
    with pytest.raises(ValueError, match="multiple of 3"):
        AdaptConfig.model_validate({"profile": "x", "mntp": {"batch_size": 8}, "cluster": {"num_workers": 3}})


def test_command_line_overrides_the_profile():
    adapt = _adapt_module()
    args = adapt.parse_args(["--corpus", "c", "--output", "o", "--profile", "quick", "--num-workers", "1",
                             "--mntp-steps", "7", "--simcse-lr", "1e-3", "--stages", "mntp", "--name", "run1"])
    cfg = adapt.build_config(args)
    assert cfg.cluster.num_workers == 1 and cfg.mntp.steps == 7 and cfg.simcse.lr == 1e-3
    assert cfg.stages == ["mntp"] and cfg.cluster.name == "run1"


def test_unknown_profile_lists_the_known_ones():
    adapt = _adapt_module()
    from pipelines.cli import UsageError

    with pytest.raises(UsageError, match="quick"):
        adapt.build_config(adapt.parse_args(["--corpus", "c", "--output", "o", "--profile", "nope"]))


def test_supervised_profiles():
    paper = load_config(next(p for p in CONFIGS if p.stem == "paper_supervised"))
    s = paper.supervised
    assert paper.stages == ["mntp", "supervised"]
    assert (s.batch_size, s.lr, s.warmup_steps, s.steps, s.scale) == (512, 2e-4, 300, 1000, 50.0)
    assert s.chunk_size and s.dtype == "bfloat16" and s.gradient_checkpointing
    cpu = load_config(next(p for p in CONFIGS if p.stem == "cpu_supervised"))
    quality = load_config(next(p for p in CONFIGS if p.stem == "cpu_quality"))
    assert cpu.stages == ["mntp", "supervised"] and cpu.mntp == quality.mntp  # MNTP as in cpu_quality
    assert (cpu.supervised.query_column, cpu.supervised.negative_column) == ("query", "negative")


def test_supervised_command_line():
    adapt = _adapt_module()
    args = adapt.parse_args(["--pairs", "p.parquet", "--output", "o", "--config", "jobs/configs/cpu_supervised.yaml",
                             "--supervised-steps", "5", "--chunk-size", "0", "--seed", "7"])
    cfg = adapt.build_config(args)
    assert cfg.supervised.steps == 5 and cfg.supervised.chunk_size is None
    assert cfg.mntp.seed == cfg.supervised.seed == 7
    from pipelines.cli import UsageError

    with pytest.raises(UsageError, match="--corpus"):
        adapt.check_paths(args, cfg)  # the mntp stage needs a corpus
    args = adapt.parse_args(["--output", "o", "--config", "jobs/configs/cpu_supervised.yaml", "--corpus", "c"])
    with pytest.raises(UsageError, match="--pairs"):
        adapt.check_paths(args, adapt.build_config(args))


def test_a_stage_named_twice_is_an_error():
    with pytest.raises(ValueError, match="once"):
        AdaptConfig.model_validate({"profile": "x", "stages": ["mntp", "mntp"]})


def test_encoder_records_the_training_instructions_and_the_last_contrastive_pooling():
    from pipelines.train.chain import encoder_instructions, encoder_pooling

    cfg = AdaptConfig.model_validate({
        "profile": "x", "stages": ["mntp", "simcse", "supervised"], "simcse": {"instruction": "S:"},
        "supervised": {"instruction": "Q:", "pooling": "last_token"}})
    assert encoder_instructions(cfg) == {"sts": "S:", "query": "Q:"}
    assert encoder_pooling(cfg) == "last_token"
    only_mntp = cfg.model_copy(update={"stages": ["mntp"]})
    assert encoder_instructions(only_mntp) == {} and encoder_pooling(only_mntp) == "mean"


def test_in_training_evaluation_needs_its_dev_data(tmp_path):
    from pipelines.cli import UsageError

    adapt = _adapt_module()
    with pytest.raises(ValueError, match="eval_every needs eval_stsb"):
        AdaptConfig(profile="x", stages=["mntp"], mntp={"eval_every": 10})
    args = adapt.parse_args(["--corpus", "c.txt", "--output", str(tmp_path), "--eval-stsb", str(tmp_path),
                             "--eval-every", "25"])
    cfg = adapt.build_config(args)
    assert cfg.eval_stsb == str(tmp_path) and cfg.mntp.eval_every == cfg.simcse.eval_every == 25
    with pytest.raises(UsageError, match="no sts-dev.csv"):
        adapt.check_paths(args, cfg)


def test_in_training_evaluation_pairs_span_the_whole_dev_file(tmp_path):
    """The dev file is sorted by genre: the evaluation sample is spread over it, not its first rows."""
    from pipelines.train.chain import stsb_dev_pairs

    genres = ["captions"] * 6 + ["forums"] * 2 + ["news"] * 2
    rows = [f"{g}\tf\t2012\t{i:04d}\t{i / 2:.1f}\tfirst {i}\tsecond {i}" for i, g in enumerate(genres)]
    (tmp_path / "sts-dev.csv").write_text("\n".join(rows) + "\n")
    first, second, scores = stsb_dev_pairs(str(tmp_path), 5)
    assert first == ("first 0", "first 2", "first 4", "first 6", "first 8")  # captions, forums and news
    assert second[3] == "second 6" and scores == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert len(stsb_dev_pairs(str(tmp_path), 50)[0]) == 10  # a limit above the file's size takes it whole
