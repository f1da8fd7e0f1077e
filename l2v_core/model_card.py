"""The model card (`README.md`) of an exported encoder folder, Hugging Face style.

Everything on it is read from the folder itself: `l2v_config.json` (base model and its hash,
pooling, instructions, the stage history the adapt chain records) and the sentence-transformers
files (`st_format.py`: which prompts sentence-transformers reproduces). An evaluation report of
`jobs/evaluate.py` adds its table.

Add or refresh the card of an existing folder:
    python -m l2v_core.model_card OUT/encoder --eval-report out/eval_adapted.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .default_model import DEFAULT_MODEL_NAME, is_default_model
from .settings import EncoderSettings
from .st_format import MODULES_FILE, POOLING_DIR, ST_CONFIG_FILE, UNEXPRESSIBLE_TYPE

CARD_FILE = "README.md"
DEFAULT_MODEL_ID = f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"
_KNOWN_LICENSES = {DEFAULT_MODEL_ID: "apache-2.0"}
_STAGE_KEYS_SHOWN = ("steps", "batch_size", "lr", "num_workers", "wall_time_s", "final_loss")


def public_model_name(ref: str | None) -> str:
    """A base model reference fit to publish: the Hub id of the default model, a Hub id as given,
    and a local folder's name (never its absolute path)."""
    if is_default_model(ref) or ref is None:
        return DEFAULT_MODEL_ID
    path = Path(ref)
    if path.is_absolute() or path.exists() or ref.startswith((".", "~")):
        return path.expanduser().name
    return ref


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def load_eval_report(report: str | os.PathLike | dict | None) -> dict | None:
    if report is None or isinstance(report, dict):
        return report
    path = Path(report)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"evaluation report {path} not found (write one with jobs/evaluate.py --out)") from err
    except ValueError as err:
        raise ValueError(f"evaluation report {path} is not JSON: {err}") from err
    if not isinstance(value, dict) or not ({"stsb_test", "scifact_test"} & value.keys()):
        raise ValueError(f"{path} is not a jobs/evaluate.py report (no stsb_test or scifact_test)")
    return value


def render_model_card(folder: str | os.PathLike, eval_report: dict | None = None) -> str:
    folder = Path(folder)
    settings = EncoderSettings.load(folder)
    name = public_model_name(settings.base_model)
    st_ok, prompts = _st_state(folder)
    front = ["---", f"library_name: {'sentence-transformers' if st_ok else 'transformers'}",
             "pipeline_tag: sentence-similarity"]
    if _is_hub_id(name):
        front.append(f"base_model: {name}")
    if name in _KNOWN_LICENSES:
        front.append(f"license: {_KNOWN_LICENSES[name]}")
    tags = ["sentence-transformers", "feature-extraction", "sentence-similarity", "llm2vec", "l2v-ray"]
    front += ["tags:", *[f"- {t}" for t in tags], "---", ""]

    lines = [f"# {folder.name}: {name} as a text encoder (LLM2Vec)", "",
             f"A decoder-only LLM turned into a text encoder with l2v-ray ({settings.l2v_version}): "
             f"{'bidirectional' if settings.bidirectional else 'causal'} attention, {settings.pooling} pooling, "
             f"at most {settings.max_length} tokens per text (instruction included), unit-length vectors.", "",
             "## Base model", "", f"- name: `{name}`",
             f"- weights sha256 (safetensors files): `{settings.base_model_sha256 or 'unknown'}`", ""]
    lines += _stages_section(settings.stages)
    lines += _eval_section(eval_report)
    lines += _usage_section(folder, settings, st_ok, prompts)
    return "\n".join(front + lines).rstrip() + "\n"


def write_model_card(folder: str | os.PathLike, eval_report: str | os.PathLike | dict | None = None) -> Path:
    """Write (or replace) `folder/README.md`; `eval_report`: a jobs/evaluate.py report (path or dict)."""
    path = Path(folder) / CARD_FILE
    path.write_text(render_model_card(folder, load_eval_report(eval_report)))
    return path


def _st_state(folder: Path) -> tuple[bool, dict[str, str]]:
    modules = folder / MODULES_FILE
    if not modules.is_file():
        return False, {}
    ok = all(m["type"] != UNEXPRESSIBLE_TYPE for m in json.loads(modules.read_text()))
    prompts = json.loads((folder / ST_CONFIG_FILE).read_text()).get("prompts", {})
    return ok, prompts


def _stages_section(stages: list[dict]) -> list[str]:
    if not stages:
        return ["## Training", "", "No adaptation stages recorded (the base weights, used as an encoder).", ""]
    lines = ["## Training", "", "Stages in order (from `l2v_config.json`; wall time per stage on its cluster):", "",
             "| stage | " + " | ".join(_STAGE_KEYS_SHOWN) + " | data | other settings |",
             "|---" * (len(_STAGE_KEYS_SHOWN) + 3) + "|"]
    for stage in stages:
        shown = [_cell(stage.get(k)) for k in _STAGE_KEYS_SHOWN]
        data = public_model_name(stage["corpus"]) if stage.get("corpus") else ""
        other = {k: v for k, v in stage.items() if k not in (*_STAGE_KEYS_SHOWN, "name", "corpus")}
        lines.append(f"| {stage.get('name', '?')} | " + " | ".join(shown) + f" | {data} | {_cell(other)} |")
    return lines + [""]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        inner = ", ".join(f"{k}={f'({_cell(v)})' if isinstance(v, dict) else _cell(v)}" for k, v in value.items())
        return inner.replace("|", "/")
    return str(value).replace("|", "/")


def _eval_section(report: dict | None) -> list[str]:
    if not report:
        return []
    lines = ["## Evaluation", "", "From `jobs/evaluate.py`" + (f" (first {report['limit']} items per task)"
                                                             if report.get("limit") else "") + ":", "",
             "| task | metric | value | size |", "|---|---|---|---|"]
    if "stsb_test" in report:
        lines.append(f"| STS-B test | Spearman x 100 | {report['stsb_test'].get('spearman')} | "
                     f"{report['stsb_test'].get('pairs')} pairs |")
    if "scifact_test" in report:
        sci = report["scifact_test"]
        lines.append(f"| SciFact test | nDCG@10 x 100 | {sci.get('ndcg@10')} | {sci.get('queries')} queries, "
                     f"{sci.get('docs')} docs |")
    return lines + [""]


def _usage_section(folder: Path, settings: EncoderSettings, st_ok: bool, prompts: dict[str, str]) -> list[str]:
    first = next(iter(settings.instructions), None)
    lines = ["## Usage", "", "### l2v_core", "", "```python", "from l2v_core import Encoder", "",
             'encoder = Encoder.from_pretrained("PATH/TO/THIS/FOLDER")',
             'vectors = encoder.encode(["A cat sits on the mat."])  # (n, dim) float32, unit length']
    if first:
        lines.append(f'queries = encoder.encode(["cats"], instruction={settings.instructions[first]!r})')
    lines += ["```", "", "Named instructions (`l2v_config.json`):", ""]
    lines += [f"- `{k}`: {v!r}" for k, v in settings.instructions.items()] or ["- none"]
    lines += ["", "### sentence-transformers", ""]
    if st_ok:
        lines += ["```python", "from sentence_transformers import SentenceTransformer", "",
                  'model = SentenceTransformer("PATH/TO/THIS/FOLDER")',
                  'vectors = model.encode(["A cat sits on the mat."])  # the same vectors as l2v_core']
        if prompts:
            lines.append(f'queries = model.encode(["cats"], prompt_name="{next(iter(prompts))}")')
        lines += ["```", "", "Tested with sentence-transformers 6.3 (the files need >= 5.4: plain text, no chat "
                             "template). Attention stays bidirectional through `is_causal: false` in "
                             "`config.json`.", ""]
        missing = sorted(set(settings.instructions) - set(prompts))
        if missing:
            lines += [f"Not available as sentence-transformers prompts: {', '.join(missing)}. With this tokenizer and "
                      f"pooling, sentence-transformers cannot leave exactly the instruction's tokens out of the pool; "
                      f"use l2v_core for them. `prompt_name` raises for them, except `query` and `document`: "
                      f"for those, sentence-transformers >= 6 falls back to an empty prompt (no instruction), "
                      f"and so does mteb.", ""]
    else:
        reason = json.loads((folder / POOLING_DIR / "config.json").read_text()).get("reason", "")
        lines += [f"Not loadable: {reason}. `SentenceTransformer(folder)` raises instead of returning other "
                  f"vectors; use l2v_core.", ""]
    if not any("adapter_base" in stage for stage in settings.stages):
        return lines
    lines += ["### peft", "", "`jobs/adapt.py` keeps each stage's LoRA adapter beside this folder, in "
              "`../adapters/<stage>/` (see `../adapters/README.md`). Each one's `base_model_name_or_path` "
              "names the body it belongs on (a relative one is relative to the adapter's folder); they "
              "adapt the bare decoder body (`AutoModel`), in stage order:", "",
              "```python", "from peft import PeftModel", "from transformers import AutoModel", "",
              'body = AutoModel.from_pretrained("BASE_MODEL")',
              'body = PeftModel.from_pretrained(body, "../adapters/mntp").merge_and_unload()',
              "```", "",
              "An adapter changes the weights only: attention must also be switched to bidirectional "
              "(`l2v_core.enable_bidirectional(body)`), and pooling done as above.", ""]
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write the model card README.md of an exported encoder folder.")
    p.add_argument("folder", help="an encoder folder (with l2v_config.json)")
    p.add_argument("--eval-report", help="a jobs/evaluate.py --out report to include")
    args = p.parse_args(argv)
    try:
        print(write_model_card(args.folder, args.eval_report))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
