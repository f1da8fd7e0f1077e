"""The exported peft adapters are portable: no absolute base path, the right base for each stage,
task_type set, and each loads with `PeftModel.from_pretrained` from a copied folder to give the
encoder's weights. The export runs on plain checkpoint folders here (no Ray Train needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from train_helpers import SENTENCES, save_tiny_causal_lm
from transformers import AutoModel

from l2v_core import Encoder, enable_bidirectional, load_model
from l2v_core.lora import apply_lora, save_adapter
from pipelines.train.export import adapter_base, export_encoder, keep_adapter_and_log, write_adapters_readme
from pipelines.train.loop_tools import ADAPTER_DIR, STEP_LOG, merge_earlier_adapters


def _fake_checkpoint(folder: Path, model_ref: str, earlier: list, seed: int) -> Path:
    """What a stage's last checkpoint holds: a LoRA adapter on the (earlier-merged) body, nonzero."""
    body, _ = load_model(model_ref, device="cpu", dtype="float32")
    body = merge_earlier_adapters(body, earlier)
    lora = apply_lora(body, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_adapter(lora, folder / ADAPTER_DIR)
    (folder / STEP_LOG).write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    return folder


def test_adapters_are_portable_and_load_from_a_copy(tmp_path):
    model_ref = save_tiny_causal_lm(tmp_path / "models" / "tiny-base")
    out = tmp_path / "out"
    mntp = _fake_checkpoint(tmp_path / "ckpt_mntp", model_ref, [], seed=1)
    simcse = _fake_checkpoint(tmp_path / "ckpt_simcse", model_ref, [mntp], seed=2)
    export_encoder(model_ref, [mntp], out / "stages" / "mntp" / "encoder", pooling="mean", max_length=64, stages=[])
    bases = [("mntp", adapter_base(model_ref, out / "adapters", None)),
             ("simcse", adapter_base(model_ref, out / "adapters", out / "stages" / "mntp" / "encoder"))]
    for (stage, base), ckpt in zip(bases, (mntp, simcse)):
        keep_adapter_and_log(ckpt, out / "adapters", out / "logs", stage, base=base)
    write_adapters_readme(out / "adapters", bases)
    export_encoder(model_ref, [mntp, simcse], out / "encoder", pooling="mean", max_length=64, stages=[])

    configs = {s: json.loads((out / "adapters" / s / "adapter_config.json").read_text()) for s in ("mntp", "simcse")}
    assert configs["mntp"]["base_model_name_or_path"] == "tiny-base"  # a name, not the absolute path
    assert configs["simcse"]["base_model_name_or_path"] == "../../stages/mntp/encoder"  # the MNTP-merged body
    assert all(c["task_type"] == "FEATURE_EXTRACTION" for c in configs.values())
    assert str(tmp_path) not in (out / "adapters" / "simcse" / "adapter_config.json").read_text()
    assert "../../stages/mntp/encoder" in (out / "adapters" / "README.md").read_text()

    # the whole output moved elsewhere: the relative base still resolves from the copied adapter
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    simcse_dir = moved / "adapters" / "simcse"
    body = AutoModel.from_pretrained(simcse_dir / configs["simcse"]["base_model_name_or_path"])
    merged = enable_bidirectional(PeftModel.from_pretrained(body, str(simcse_dir)).merge_and_unload())
    final = Encoder.from_pretrained(moved / "encoder")
    via_peft = Encoder(merged, final.tokenizer, final.settings)
    np.testing.assert_allclose(via_peft.encode(SENTENCES[:3]), final.encode(SENTENCES[:3]), atol=1e-5)

    # the MNTP adapter on the base model gives the MNTP stage's body
    body = AutoModel.from_pretrained(model_ref)
    mntp_body = PeftModel.from_pretrained(body, str(moved / "adapters" / "mntp")).merge_and_unload()
    stage_body = AutoModel.from_pretrained(moved / "stages" / "mntp" / "encoder")
    for (name, a), b in zip(mntp_body.state_dict().items(), stage_body.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
