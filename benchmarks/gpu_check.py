"""The GPU path, proven in one command on a lent GPU machine (docs/gpu.md says how to run it there).

    python benchmarks/gpu_check.py --out DIR [--tokenizer DIR] [--budget-s 420]
    python benchmarks/gpu_check.py --out DIR --cpu-smoke   # the same code on tiny models, on the CPU
    python benchmarks/gpu_check.py --bundle gpu_bundle     # the small files to carry to the GPU machine

Checks, each recorded with pass/fail and its figures in DIR/gpu_check.json (rewritten after every
check, so a killed run still leaves a report) and logged to DIR/gpu_check.log:
  environment     versions, device, the measured bf16 matrix-product peak (the MFU denominator)
  probe           bidirectional probe for Llama, Mistral, Qwen2, Gemma 2 under SDPA, FlexAttention
                  and flash attention (when importable); causal again when asked
  encoder_parity  Encoder on the device (bf16) against CPU float32, per-row cosine >= 0.999, every
                  pooling mode, with and without instruction; packed passes too, under each
                  attention implementation; no attention across packed texts
  throughput      encode tokens/s and MFU of a random ~1B Llama over SciFact's token lengths:
                  padded micro-batches against packed ones
  train_steps     one LoRA step each of MNTP, SimCSE and supervised contrastive, plain torch:
                  finite loss, tokens/s, peak memory
  pytest_gpu      `pytest -m gpu tests/test_gpu.py` (the tests skip without CUDA)
One failing check does not stop the others. A global time budget skips what no longer fits.
Needs torch, transformers, peft, numpy and pydantic only (no Ray, no FAISS, no network).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from l2v_core import POOLING_MODES, Encoder, EncoderSettings, TokenizedBatch, probe_is_bidirectional  # noqa: E402
from l2v_core.batching import padded_positions, plan_micro_batches  # noqa: E402
from l2v_core.bidirectional import set_attention_mode  # noqa: E402
from l2v_core.packing import default_row_tokens, padded_row_length, plan_passes, row_length  # noqa: E402

log = logging.getLogger("gpu_check")

LENGTHS_FILE = REPO / "benchmarks" / "data" / "scifact_token_lengths.json"
BUNDLE_DIR = REPO / "gpu_bundle"
DEFAULT_VOCAB = 49152  # SmolLM2's vocabulary: the throughput model's size without its tokenizer
BUNDLE_WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
PROBE_FAMILIES = ("llama", "mistral", "qwen2", "gemma2")
INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim:"
SENTENCES = [
    "Bidirectional attention lets every token see every other token.",
    "The ACE2 receptor is expressed in the epithelial cells of the lung and the small intestine.",
    "Vitamin D supplementation did not reduce the incidence of cancer in older adults.",
    "Microglia shape synaptic connectivity during postnatal development of the mouse brain.",
    "0.5 mg/kg of the compound lowered systolic blood pressure by 12 mmHg (95% CI 8-16).",
    "A cat sits on the mat.",
    "Unicode: caf\u00e9, na\u00efve, \u00fcber, \u6f22\u5b57.",
    "Telomere length predicts mortality independently of age in a cohort of 60,000 adults.",
]


@dataclass(frozen=True)
class Profile:
    """The sizes of one run: the real check on a GPU, or the CPU smoke."""

    name: str
    device: str
    dtype: torch.dtype
    parity_overrides: dict = field(default_factory=dict)  # on top of l2v_core.testing.tiny_config
    bench: dict = field(default_factory=dict)  # LlamaConfig arguments of the throughput model
    bench_docs: int = 0  # SciFact documents timed (0 = all)
    length_divisor: int = 1  # the smoke shrinks SciFact's lengths, keeping their spread
    max_length: int = 512
    batch_tokens: int = 16384
    train_batch: int = 8  # MNTP blocks; SimCSE and supervised texts
    train_block: int = 512  # MNTP block length
    train_max_length: int = 128  # SimCSE / supervised text length cap
    train_steps: int = 3  # timed steps after one warm-up
    matmul_n: int = 8192


GPU = Profile(
    name="gpu", device="cuda", dtype=torch.bfloat16,
    parity_overrides=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                          num_key_value_heads=2),
    bench=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, max_position_embeddings=2048),
    bench_docs=0, batch_tokens=32768, train_batch=16,
)
SMOKE = Profile(
    name="cpu-smoke", device="cpu", dtype=torch.bfloat16,
    bench=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256),
    bench_docs=32, length_divisor=8, max_length=64, batch_tokens=512, train_batch=4, train_block=32,
    train_max_length=32, train_steps=1, matmul_n=256,
)


# ---------------------------------------------------------------------------------------- report
class Report:
    """Runs checks under a global deadline; writes the JSON report after each one."""

    def __init__(self, out: Path, profile: Profile, budget_s: float):
        self.path = out / "gpu_check.json"
        self.deadline = time.monotonic() + budget_s
        self.data = {"profile": profile.name, "budget_s": budget_s,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checks": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, fn, *, needs_s: float) -> dict:
        if self.left() < needs_s:
            result = {"status": "skipped", "why": f"time budget: {self.left():.0f} s left, needs about {needs_s:.0f} s"}
        else:
            log.info("---- %s (%.0f s of budget left)", name, self.left())
            start, cpu_start = time.monotonic(), time.process_time()
            try:
                figures = fn()
                result = {"status": "passed" if figures.pop("passed") else "failed", **figures}
            except Exception as err:  # one broken check must not stop the others
                log.error("%s raised:\n%s", name, traceback.format_exc())
                result = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000]}
            result["seconds"] = round(time.monotonic() - start, 2)
            result["cpu_seconds"] = round(time.process_time() - cpu_start, 2)  # wall time lies on a busy CPU
        log.info("%s: %s", name, result["status"])
        self.data["checks"][name] = result
        self.write()
        return result

    def write(self) -> None:
        checks = self.data["checks"].values()
        self.data["passed"] = bool(checks) and all(c["status"] == "passed" for c in checks)
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def flash_importable() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # absent, or built against another torch/CUDA
        return False
    return True


def implementations(device: torch.device) -> list[str]:
    """The attention implementations worth proving here. FlexAttention only on CUDA: on a CPU its
    compilation takes minutes."""
    found = ["sdpa"]
    if device.type == "cuda":
        found.append("flex_attention")
        if flash_importable():
            found.append("flash_attention_2")
    return found


# ------------------------------------------------------------------------------------ 0. environment
def check_environment(profile: Profile) -> dict:
    import peft
    import pydantic
    import transformers

    device = torch.device(profile.device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "numpy": np.__version__, "pydantic": pydantic.VERSION, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "flash_attn": flash_importable(), "threads": torch.get_num_threads()}
    env["matmul_tflops"] = float(f"{measure_matmul_tflops(device, profile.dtype, profile.matmul_n):.4g}")
    log.info("environment: %s", env)
    return {"passed": True, **env}


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """The peak used for MFU: a square n x n x n product on random data (zeros run faster)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


# ------------------------------------------------------------------------------------------ 1. probe
def check_probe(profile: Profile) -> dict:
    from l2v_core.testing import tiny_model_and_tokenizer

    device = torch.device(profile.device)
    results, ok = {}, True
    for family in PROBE_FAMILIES:
        ran_any = False
        for impl in implementations(device) + ["eager"]:
            if impl == "eager" and ran_any:
                continue  # eager only as the fallback of a family that supports none of the fast ones
            if impl == "flex_attention" and family != "llama" and ran_any:
                continue  # each FlexAttention compile costs seconds: one family shows the mechanism
            key = f"{family}/{impl}"
            try:
                model, _ = tiny_model_and_tokenizer(family, attn_implementation=impl)
            except (ValueError, ImportError) as err:  # transformers refuses this implementation here
                results[key] = {"supported": False, "why": str(err).split(". ")[0][:300]}
                continue
            ran_any = True
            try:
                model = model.to(device, profile.dtype)
                set_attention_mode(model, bidirectional=True, verify=False)
                bidirectional = probe_is_bidirectional(model)
                set_attention_mode(model, bidirectional=False, verify=False)
                causal = not probe_is_bidirectional(model)
            except Exception as err:  # e.g. the probe's mask / no-mask disagreement: record, go on
                log.error("probe %s raised:\n%s", key, traceback.format_exc())
                results[key], ok = {"error": f"{type(err).__name__}: {err}"[:500]}, False
                continue
            results[key] = {"bidirectional": bidirectional, "causal_when_asked": causal}
            ok &= bidirectional and causal
            log.info("probe %s: bidirectional=%s causal_when_asked=%s", key, bidirectional, causal)
        ok &= ran_any
    return {"passed": ok, "dtype": str(profile.dtype), "results": results}


# ------------------------------------------------------------------------------------ 2. parity
def parity_texts(smoke: bool) -> list[str]:
    texts = list(SENTENCES[:4] if smoke else SENTENCES)
    texts.append(" ".join(SENTENCES * (1 if smoke else 3)))  # a long one
    return texts


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a * b).sum(1).min()), 6)


def check_encoder_parity(profile: Profile, tokenizer) -> dict:
    from transformers import AutoModel

    from l2v_core.testing import tiny_config

    device = torch.device(profile.device)
    config = tiny_config("llama", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **profile.parity_overrides)
    torch.manual_seed(0)
    reference_model = AutoModel.from_config(config, attn_implementation="sdpa").eval()  # CPU float32
    texts = parity_texts(profile is SMOKE)
    figures: dict = {"device": str(device), "dtype": str(profile.dtype), "texts": len(texts), "min_cosine": {}}
    ok = True
    models = {}
    for impl in implementations(device):
        model = copy.deepcopy(reference_model)
        model.set_attn_implementation(impl)
        models[impl] = model.to(device, profile.dtype)
    for pooling in POOLING_MODES:
        settings = EncoderSettings(pooling=pooling, max_length=profile.max_length)
        reference = Encoder(reference_model, tokenizer, settings)
        for instruction in (None, INSTRUCTION):
            expected = reference.encode(texts, instruction)
            for impl, model in models.items():
                if impl == "flex_attention" and pooling != "mean":
                    continue  # FlexAttention compiles per shape and mask: one pooling mode is enough
                encoder = Encoder(model, tokenizer, settings)
                for packed in (False, True) if impl != "flex_attention" else (True,):
                    got = encoder.encode(texts, instruction, packed=packed)
                    cos = _min_cos(expected, got)
                    prompt = "instruction" if instruction else "plain"
                    key = f"{pooling}/{prompt}/{impl}/{'packed' if packed else 'padded'}"
                    figures["min_cosine"][key] = cos
                    ok &= cos >= 0.999
    figures["worst"] = min(figures["min_cosine"].items(), key=lambda kv: kv[1])
    figures["isolation"] = {impl: packed_isolation(Encoder(model, tokenizer, EncoderSettings()))
                            for impl, model in models.items()}
    ok &= all(v["ok"] for v in figures["isolation"].values())
    log.info("parity: worst %s; isolation %s", figures["worst"], figures["isolation"])
    return {"passed": ok, **figures}


def packed_isolation(encoder: Encoder) -> dict:
    """Text A shares a row with text B; changing B must leave A's vector as it was (up to the
    rounding of the device's dtype) while B's own vector moves."""
    a, b1, b2 = SENTENCES[1], SENTENCES[2], SENTENCES[3]
    before = encoder.encode([a, b1], packed=True)
    after = encoder.encode([a, b2], packed=True)
    moved_a = float(np.abs(before[0] - after[0]).max())
    moved_b = float(np.abs(before[1] - after[1]).max())
    return {"a_moved": moved_a, "b_moved": moved_b, "ok": moved_a <= 0.01 * moved_b}


# ------------------------------------------------------------------------------------ 3. throughput
def load_lengths(profile: Profile, max_length: int, docs: int = 0) -> list[int]:
    """SciFact's token lengths (a seeded sample of `docs`), truncated like the encoder would."""
    lengths = json.loads(LENGTHS_FILE.read_text())["lengths"]
    if docs and docs < len(lengths):
        lengths = random.Random(0).sample(lengths, docs)
    return [min(max(1, n // profile.length_divisor), max_length) for n in lengths]


def random_batch(lengths: list[int], vocab: int, seed: int = 0) -> TokenizedBatch:
    """Token ids drawn at random (speed does not depend on them), every token pooled."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, vocab, n).tolist() for n in lengths]
    return TokenizedBatch(input_ids=ids, pool_mask=[[1] * n for n in lengths], n_tokens=list(lengths),
                          truncated=[False] * len(lengths))


def make_model(profile: Profile, vocab: int, *, with_lm_head: bool = False, attn: str = "sdpa"):
    """The random benchmark Llama, built directly on the device in the profile's dtype."""
    from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, pad_token_id=0, bos_token_id=None,
                         eos_token_id=0, **profile.bench)
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if with_lm_head else AutoModel
    with torch.device(profile.device):
        model = auto.from_config(config, dtype=profile.dtype, attn_implementation=attn)
    return model


def body_params(model) -> int:
    """Parameters that cost FLOPs per token (the embedding table is a lookup)."""
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


def model_flops(model, lengths: list[int]) -> float:
    """Forward FLOPs of the real tokens: 2 x body parameters per token, plus attention scores and
    their weighted sum over each text alone (4 x hidden x n^2 per layer). Padding and attention
    across packed texts are not useful work and are not counted."""
    config = model.config
    per_token = 2 * body_params(model)
    attention = 4 * config.num_hidden_layers * config.hidden_size * sum(n * n for n in lengths)
    return per_token * sum(lengths) + attention


def check_throughput(profile: Profile, vocab: int, peak_tflops: float | None, report: Report) -> dict:
    device = torch.device(profile.device)
    lengths = load_lengths(profile, profile.max_length, profile.bench_docs)
    batch = random_batch(lengths, vocab)
    model = make_model(profile, vocab)
    flops = model_flops(model, lengths)
    figures: dict = {"config": profile.bench, "vocab": vocab, "parameters": sum(p.numel() for p in model.parameters()),
                     "texts": len(lengths), "real_tokens": sum(lengths), "max_length": profile.max_length,
                     "batch_tokens": profile.batch_tokens, "model_tflop": round(flops / 1e12, 3),
                     "peak_tflops": peak_tflops, "variants": {}}
    variants = [("padded", "sdpa", False)] + [(f"packed_{impl}", impl, True) for impl in implementations(device)]
    ok = True
    for name, impl, packed in variants:
        if report.left() < 30:
            figures["variants"][name] = {"status": "skipped", "why": "time budget"}
            continue
        try:
            result = time_variant(profile, model, impl, packed, batch, flops, peak_tflops)
        except Exception as err:  # one variant failing (a kernel, a compile) leaves the others
            log.error("throughput %s raised:\n%s", name, traceback.format_exc())
            result = {"error": f"{type(err).__name__}: {err}"[:1000], "finite": False}
        ok &= result["finite"]
        figures["variants"][name] = result
        log.info("throughput %s: %s", name, result)
    padded = figures["variants"].get("padded", {})
    for name, result in figures["variants"].items():
        if name != "padded" and "tokens_per_s" in result and "tokens_per_s" in padded:
            result["speedup_over_padded"] = round(result["tokens_per_s"] / padded["tokens_per_s"], 3)
    del model
    _free(device)
    return {"passed": ok, **figures}


def time_variant(profile: Profile, model, impl: str, packed: bool, batch: TokenizedBatch, flops: float,
                 peak_tflops: float | None) -> dict:
    """The second of two identical encode runs (the first compiles and allocates), end to end."""
    device = torch.device(profile.device)
    model.set_attn_implementation(impl)
    encoder = Encoder(model, _NoTokenizer(), EncoderSettings(max_length=profile.max_length))
    encoder.encode_tokenized(batch, batch_tokens=profile.batch_tokens, packed=packed)
    _sync(device)
    start = time.perf_counter()
    vectors = encoder.encode_tokenized(batch, batch_tokens=profile.batch_tokens, packed=packed)
    _sync(device)
    seconds = time.perf_counter() - start
    real = sum(batch.n_tokens)
    computed = computed_positions(model, batch, profile.batch_tokens, packed)
    result = {"seconds": round(seconds, 3), "tokens_per_s": round(real / seconds, 1),
              "model_tflops": float(f"{flops / seconds / 1e12:.4g}"), "computed_positions": computed,
              "padding_share": round(1 - real / computed, 4), "finite": bool(np.isfinite(vectors).all())}
    if peak_tflops:
        result["mfu"] = float(f"{flops / seconds / 1e12 / peak_tflops:.4g}")
    return result


class _NoTokenizer:
    """The throughput run feeds token ids directly: only the pad id is read."""

    pad_token_id = 0


def computed_positions(model, batch: TokenizedBatch, batch_tokens: int, packed: bool) -> int:
    """Positions the forward passes compute (rows x row length, summed), padding included."""
    if not packed:
        return padded_positions(batch.n_tokens, plan_micro_batches(batch.n_tokens, batch_tokens))
    passes = plan_passes(batch.n_tokens, batch_tokens, default_row_tokens(model, batch_tokens))
    implementation = str(model.config._attn_implementation)
    return sum(len(rows) * padded_row_length(implementation, max(row_length(batch.n_tokens, r) for r in rows))
               for rows in passes)


# ------------------------------------------------------------------------------------ 4. training
def check_train_steps(profile: Profile, tokenizer, vocab: int) -> dict:
    device = torch.device(profile.device)
    stages = {"mntp": mntp_step, "simcse": simcse_step, "supervised": supervised_step}
    figures, ok = {}, True
    for name, step in stages.items():
        try:
            result = timed_steps(profile, device, step(profile, tokenizer, vocab, device))
        except Exception as err:
            log.error("train step %s raised:\n%s", name, traceback.format_exc())
            result = {"error": f"{type(err).__name__}: {err}"[:1000], "finite_loss": False}
        figures[name] = result
        ok &= result["finite_loss"]
        log.info("train %s: %s", name, result)
        _free(device)
    return {"passed": ok, "dtype": str(profile.dtype), "config": profile.bench, **figures}


def timed_steps(profile: Profile, device: torch.device, step) -> dict:
    """One warm-up step, then `train_steps` timed ones: median tokens/s, peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, rates = [], []
    for i in range(1 + profile.train_steps):
        _sync(device)
        start = time.perf_counter()
        loss, tokens = step()
        _sync(device)
        if i > 0:
            rates.append(tokens / (time.perf_counter() - start))
        losses.append(loss)
    return {"losses": [float(f"{x:.4g}") for x in losses], "finite_loss": all(math.isfinite(x) for x in losses),
            "tokens_per_step": tokens, "tokens_per_s": round(float(np.median(rates)), 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _optimizer_step(model, optimizer) -> None:
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def mntp_step(profile: Profile, tokenizer, vocab: int, device: torch.device):
    """The MNTP loop's step (pipelines/train/mntp_loop.py) from l2v_core's pieces, without Ray."""
    from l2v_core import enable_bidirectional
    from l2v_core.lora import apply_lora
    from l2v_core.mntp import MNTPObjective, mask_tokens, resolve_mask_token_id

    model = make_model(profile, vocab, with_lm_head=True)
    enable_bidirectional(model)
    lora_body = apply_lora(model.base_model)
    model.train()
    objective = MNTPObjective(model)
    optimizer = torch.optim.AdamW([p for p in lora_body.parameters() if p.requires_grad], lr=1e-4)
    mask_id = resolve_mask_token_id(tokenizer, tokenizer.eos_token)
    generator = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(vocab, (profile.train_batch, profile.train_block), generator=generator)
        attention = torch.ones_like(ids)
        masked, labels = mask_tokens(ids, attention, mask_token_id=mask_id, vocab_size=vocab, generator=generator)
        with _autocast(device):
            loss = objective(masked.to(device), attention.to(device), labels.to(device))
        loss.backward()
        _optimizer_step(lora_body, optimizer)
        return loss.item(), ids.numel()

    return step


def _text_batch(profile: Profile, vocab: int, generator: torch.Generator, rows: int):
    """Right-padded random texts with SciFact's lengths, capped at the training max length."""
    lengths = load_lengths(profile, profile.train_max_length)
    picks = torch.randint(len(lengths), (rows,), generator=generator).tolist()
    n = [lengths[i] for i in picks]
    ids = torch.zeros((rows, max(n)), dtype=torch.long)
    attention = torch.zeros_like(ids)
    for j, length in enumerate(n):
        ids[j, :length] = torch.randint(1, vocab, (length,), generator=generator)
        attention[j, :length] = 1
    return ids, attention


def _embedder(profile: Profile, vocab: int, attention_dropout: float):
    from l2v_core import enable_bidirectional
    from l2v_core.contrastive import PooledEmbedder, set_attention_dropout
    from l2v_core.lora import apply_lora

    body = make_model(profile, vocab)
    enable_bidirectional(body)
    lora_body = apply_lora(body)
    if attention_dropout:
        set_attention_dropout(body, attention_dropout)
    embedder = PooledEmbedder(lora_body, "mean").train()
    optimizer = torch.optim.AdamW([p for p in lora_body.parameters() if p.requires_grad], lr=1e-4)
    return embedder, lora_body, optimizer


def simcse_step(profile: Profile, tokenizer, vocab: int, device: torch.device):
    """The SimCSE loop's step (pipelines/train/simcse_loop.py): two dropout views in one pass."""
    from l2v_core.contrastive import simcse_loss

    embedder, lora_body, optimizer = _embedder(profile, vocab, attention_dropout=0.3)
    generator = torch.Generator().manual_seed(1)

    def step():
        ids, attention = _text_batch(profile, vocab, generator, profile.train_batch)
        with _autocast(device):
            both = embedder(ids.repeat(2, 1).to(device), attention.repeat(2, 1).to(device),
                            attention.repeat(2, 1).to(device))
        loss = simcse_loss(both[: len(ids)], both[len(ids):])
        loss.backward()
        _optimizer_step(lora_body, optimizer)
        return loss.item(), 2 * int(attention.sum())

    return step


def supervised_step(profile: Profile, tokenizer, vocab: int, device: torch.device):
    """Supervised contrastive (queries, positives, hard negatives) with l2v_core's loss."""
    from l2v_core.contrastive import supervised_contrastive_loss

    embedder, lora_body, optimizer = _embedder(profile, vocab, attention_dropout=0.0)
    generator = torch.Generator().manual_seed(2)

    def step():
        parts = [_text_batch(profile, vocab, generator, profile.train_batch) for _ in range(3)]
        with _autocast(device):
            vectors = [embedder(ids.to(device), att.to(device), att.to(device)) for ids, att in parts]
        loss = supervised_contrastive_loss(*vectors)
        loss.backward()
        _optimizer_step(lora_body, optimizer)
        return loss.item(), sum(int(att.sum()) for _, att in parts)

    return step


# ------------------------------------------------------------------------------------ 5. pytest -m gpu
def check_pytest_gpu(out: Path, timeout_s: float) -> dict:
    xml = out / "pytest_gpu.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}",
               str(REPO / "tests" / "test_gpu.py")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    log.info("pytest -m gpu (exit %d):\n%s", proc.returncode, proc.stdout[-4000:] + proc.stderr[-2000:])
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["succeeded"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"passed": proc.returncode == 0 and counts["failures"] + counts["errors"] == 0, "exit_code": proc.returncode,
            "cuda": torch.cuda.is_available(), **counts}


# ------------------------------------------------------------------------------------ tokenizer and bundle
def resolve_tokenizer(path: Path | None, smoke: bool):
    """(tokenizer, where it came from): --tokenizer, else the carried bundle, else the tiny one."""
    from transformers import AutoTokenizer

    from l2v_core.testing import tiny_tokenizer

    for candidate in ([path] if path else []) + ([] if smoke else [BUNDLE_DIR / "tokenizer"]):
        if (candidate / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(candidate)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer, str(candidate)
        if path is not None and candidate == path:
            raise SystemExit(f"--tokenizer {path}: no tokenizer_config.json there (make one with --bundle)")
    return tiny_tokenizer(), "tiny fallback (l2v_core.testing.tiny_tokenizer)"


def write_bundle(folder: Path) -> None:
    """The default tokenizer's files and the wheels the GPU machine lacks (pydantic, for l2v_core)."""
    from importlib.metadata import version

    from l2v_core import load_tokenizer

    load_tokenizer(None).save_pretrained(folder / "tokenizer")
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in BUNDLE_WHEELS]
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version=3.12", "--implementation=cp", *platforms, "-d", str(wheels), *pins], check=True)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote {folder} ({size / 2**20:.1f} MiB): tokenizer/ and wheels/ ({', '.join(pins)}); "
          f"carry it as docs/gpu.md says")


def write_lengths(corpus: Path) -> None:
    """Regenerate benchmarks/data/scifact_token_lengths.json from the SciFact corpus."""
    from l2v_core import load_tokenizer

    tokenizer = load_tokenizer(None)
    docs = [json.loads(line) for line in corpus.open()]
    texts = [f"{d.get('title', '')}. {d['text']}".strip(". ") for d in docs]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    LENGTHS_FILE.write_text(json.dumps({
        "corpus": "SciFact corpus.jsonl (BEIR), title + '. ' + text, one entry per document in file order",
        "tokenizer": "SmolLM2-135M-Instruct (the default model), add_special_tokens=True, not truncated",
        "made_by": "benchmarks/gpu_check.py --write-lengths", "lengths": lengths}, separators=(",", ":")))
    print(f"wrote {LENGTHS_FILE}: {len(lengths)} documents, {sum(lengths)} tokens")


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU: proves the script runs")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: gpu_bundle/tokenizer if there)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="global time budget in seconds")
    parser.add_argument("--bundle", type=Path, help="write the files to carry (tokenizer, wheels) here, then exit")
    parser.add_argument("--write-lengths", type=Path, metavar="CORPUS_JSONL",
                        help="regenerate the SciFact token lengths file from the corpus, then exit")
    args = parser.parse_args(argv)
    if args.bundle:
        write_bundle(args.bundle)
        return 0
    if args.write_lengths:
        write_lengths(args.write_lengths)
        return 0
    if args.out is None:
        parser.error("--out is required")
    profile = SMOKE if args.cpu_smoke else GPU
    if profile.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --cpu-smoke to run the same code on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    with logging_to(args.out / "gpu_check.log"):
        return run_checks(args, profile)


def run_checks(args, profile: Profile) -> int:
    torch._dynamo.config.cache_size_limit = 64  # FlexAttention compiles per shape: many shapes here
    report = Report(args.out, profile, args.budget_s)
    tokenizer, source = resolve_tokenizer(args.tokenizer, args.cpu_smoke)
    # Without the default tokenizer the real run keeps the default model's vocabulary size.
    vocab = DEFAULT_VOCAB if profile is GPU and "tiny" in source else len(tokenizer)
    report.data["tokenizer"] = {"source": source, "vocab": len(tokenizer)}
    log.info("profile %s; tokenizer %s (vocab %d)", profile.name, source, len(tokenizer))

    env = report.run("environment", lambda: check_environment(profile), needs_s=5)
    peak = env.get("matmul_tflops")
    report.run("probe", lambda: check_probe(profile), needs_s=20)
    report.run("encoder_parity", lambda: check_encoder_parity(profile, tokenizer), needs_s=30)
    report.run("throughput", lambda: check_throughput(profile, vocab, peak, report), needs_s=60)
    report.run("train_steps", lambda: check_train_steps(profile, tokenizer, vocab), needs_s=40)
    report.run("pytest_gpu", lambda: check_pytest_gpu(args.out, max(report.left(), 10)), needs_s=15)

    print(summary(report.data))
    return 0 if report.data["passed"] else 1


@contextlib.contextmanager
def logging_to(path: Path):
    """This script's log and l2v_core's warnings to `path` and stderr while the check runs."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler()]
    loggers = [log, logging.getLogger("l2v_core")]
    for handler in handlers:
        handler.setFormatter(formatter)
        for logger in loggers:
            logger.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            for logger in loggers:
                logger.removeHandler(handler)
            handler.close()


def summary(data: dict) -> str:
    lines = [f"gpu_check ({data['profile']}): {'PASSED' if data['passed'] else 'NOT PASSED'}"]
    for name, check in data["checks"].items():
        lines.append(f"  {name:15s} {check['status']:8s} {check.get('seconds', '')}")
    for name, v in data["checks"].get("throughput", {}).get("variants", {}).items():
        if "tokens_per_s" in v:
            lines.append(f"  encode {name:22s} {v['tokens_per_s']:>12.0f} tok/s  MFU {v.get('mfu', float('nan')):.3f}")
    for name in ("mntp", "simcse", "supervised"):
        t = data["checks"].get("train_steps", {}).get(name)
        if t and "tokens_per_s" in t:
            lines.append(f"  train {name:23s} {t['tokens_per_s']:>12.0f} tok/s  peak {t['peak_memory_gib']} GiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
