#!/usr/bin/env bash
# deploy/Dockerfile's install steps in a clean virtualenv (no container engine runs on the
# development machines): copies what the image copies to WORKDIR/app, installs it with
# deploy/install.sh exactly as the image's RUN does, then checks the imports, a tiny encoder
# loaded back by sentence-transformers, and a job's --help from app/jobs/.
#
#   deploy/check_install.sh [WORKDIR]      # default: a new temporary folder; takes minutes
#
# Environment: TORCH_SPEC and TORCH_INDEX_URL as for deploy/install.sh (the CPU image sets
# TORCH_INDEX_URL to the CPU wheel index).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t l2v-install-XXXXXX)}"
mkdir -p "$work/app"
(cd "$repo" && cp -r pyproject.toml README.md l2v_core pipelines jobs deploy benchmarks "$work/app/")
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
(cd "$work/app" && bash deploy/install.sh "$py" -e "$work/app[jobs,eval,serve]")
"$py" -c "import l2v_core, pipelines, faiss, ray; print('l2v-ray', ray.__version__)"
(cd "$work" && HF_HUB_OFFLINE=1 "$py" -c "
from l2v_core import Encoder
from l2v_core.testing import save_tiny_encoder
from sentence_transformers import SentenceTransformer
folder = save_tiny_encoder('tiny-encoder')
ours = Encoder.from_pretrained(folder).encode(['A cat sits on the mat.'])
theirs = SentenceTransformer(str(folder), device='cpu').encode(['A cat sits on the mat.'])
cosine = float((ours * theirs).sum())
assert cosine > 0.9999, cosine
print('tiny encoder: l2v_core and sentence-transformers agree, cosine', round(cosine, 6))
")
"$py" "$work/app/jobs/embed_corpus.py" --help > /dev/null
echo "install check passed in $work"
