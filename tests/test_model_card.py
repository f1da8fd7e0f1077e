"""The model card README.md of an exported encoder folder: Hugging Face front matter, base model and
hash, each stage's settings, data and wall time, the evaluation table from a jobs/evaluate.py report,
usage; no absolute local paths."""

from __future__ import annotations

import json

import pytest
import yaml

from l2v_core import Encoder, EncoderSettings
from l2v_core.model_card import main, write_model_card
from l2v_core.testing import tiny_model_and_tokenizer

STAGES = [
    {"name": "bidirectional", "note": "attention switched to bidirectional, no training"},
    {"name": "mntp", "steps": 1000, "batch_size": 32, "lr": 5e-5, "num_workers": 8, "wall_time_s": 1234.5,
     "final_loss": 2.3456789, "corpus": "/mnt/nfs/data/wikitext103/", "lora": {"r": 16, "alpha": 32},
     "adapter_base": "HuggingFaceTB/SmolLM2-135M-Instruct", "block_size": 512, "mask_probability": 0.2},
    {"name": "simcse", "steps": 1000, "batch_size": 128, "lr": 3e-5, "num_workers": 8, "wall_time_s": 987.6,
     "final_loss": 0.5, "corpus": "/mnt/nfs/data/wiki1m_for_simcse.txt", "lora": {"r": 16, "alpha": 32},
     "adapter_base": "../../stages/mntp/encoder", "max_length": 128, "scale": 20.0, "attention_dropout": 0.3},
]
REPORT = {"model": "/mnt/nfs/l2v/encoder", "limit": None, "stsb_test": {"spearman": 71.23, "pairs": 1379},
          "scifact_test": {"ndcg@10": 55.5, "queries": 300, "docs": 5183}, "seconds": 100.0}


@pytest.fixture
def folder(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    settings = EncoderSettings(max_length=64, base_model="/root/.cache/l2v/models/SmolLM2-135M-Instruct",
                               base_model_sha256="ab" * 32, stages=STAGES,
                               instructions={"sts": "Retrieve semantically similar text:"})
    return Encoder(model, tokenizer, settings).save(tmp_path / "encoder")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_has_front_matter_stages_and_usage(folder):
    text = (folder / "README.md").read_text()
    front = _front_matter(text)
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "sentence-similarity"
    assert "sentence-transformers" in front["tags"] and "base_model" not in front  # a local folder: no hub id
    assert "ab" * 32 in text
    mntp_row = next(line for line in text.splitlines() if line.startswith("| mntp |"))
    assert "1000" in mntp_row and "1234" in mntp_row and "wikitext103" in mntp_row and "block_size=512" in mntp_row
    assert "lora=(r=16, alpha=32)" in mntp_row
    assert "../../stages/mntp/encoder" in text  # the SimCSE adapter's base
    assert "/mnt/nfs" not in text and "/root/" not in text  # no absolute local paths
    assert "SentenceTransformer(" in text and "PeftModel.from_pretrained" in text and "Encoder.from_pretrained" in text
    assert "## Evaluation" not in text


def test_evaluation_report_adds_its_table_also_to_an_existing_folder(folder, tmp_path):
    report = tmp_path / "eval.json"
    report.write_text(json.dumps(REPORT))
    main([str(folder), "--eval-report", str(report)])  # `python -m l2v_core.model_card FOLDER --eval-report R`
    text = (folder / "README.md").read_text()
    assert "| STS-B test | Spearman x 100 | 71.23 | 1379 pairs |" in text
    assert "| SciFact test | nDCG@10 x 100 | 55.5 |" in text


def test_a_bad_report_is_a_clear_error(folder, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="not a jobs/evaluate.py report"):
        write_model_card(folder, bad)
    with pytest.raises(SystemExit, match="error: evaluation report .*missing.json not found"):
        main([str(folder), "--eval-report", str(tmp_path / "missing.json")])  # one line, no traceback


def test_default_model_card_names_the_hub_model_and_its_license(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    folder = Encoder(model, tokenizer, EncoderSettings(base_model="default")).save(tmp_path / "enc")
    text = (folder / "README.md").read_text()
    front = _front_matter(text)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"
    assert "### peft" not in text  # no adapters behind a folder saved without training
