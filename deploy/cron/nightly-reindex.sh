#!/usr/bin/env bash
# Nightly incremental re-index through `ray job submit`, for a plain cron on a machine that can
# reach the Ray head. crontab line (02:15 every night, one log per night; see deploy/README.md):
#
#   15 2 * * * cd /opt/l2v-ray && deploy/cron/nightly-reindex.sh >> /var/log/l2v-reindex-$(date -u +\%F).log 2>&1
#
# The submission id is the date: a retried night (cron re-fired, a host rebooted) is refused by
# Ray as a duplicate instead of running twice, and this script then reports the first attempt's
# outcome. Settings come from the environment:
#   RAY_ADDRESS    the head's dashboard, e.g. http://ray-head:8265
#   CORPUS         the input parquet (folder, glob or s3:// URI)
#   INDEX_ROOT     the shared output root (NFS), holds versions/ and CURRENT
#   ENCODER        the exported encoder folder (shared)
#   SUBMISSION_ID  optional: another id, to run a night again by hand (e.g. l2v-reindex-2026-01-31-retry1)
#   PYTHON         optional: a python with ray installed (default: the one beside the `ray` command)
# Exit code: that of jobs/embed_corpus.py (0 published or nothing changed, 2 bad input or
# arguments, 3 another run holds the index, 1 anything else), read back from Ray because
# `ray job submit` itself exits 1 for every failed job. See deploy/README.md.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS, e.g. http://ray-head:8265}"
: "${CORPUS:?set CORPUS to the input parquet}"
: "${INDEX_ROOT:?set INDEX_ROOT to the shared index folder}"
: "${ENCODER:?set ENCODER to the exported encoder folder}"
night="${SUBMISSION_ID:-l2v-reindex-$(date -u +%Y-%m-%d)}"
if ! command -v ray > /dev/null; then
  # cron's PATH is /usr/bin:/bin: put the venv's bin first in the crontab (see deploy/README.md)
  echo "error: no \`ray\` command on PATH ($PATH); install ray[default] and set PATH in the crontab" >&2
  exit 1
fi
python="${PYTHON:-$(dirname "$(command -v ray)")/python}"

# Not under `set -e`: a failed job or a refused duplicate id is reported below, with its real code.
ray job submit \
  --address "$RAY_ADDRESS" \
  --submission-id "$night" \
  --working-dir . \
  --runtime-env deploy/runtime_env.yaml \
  -- python jobs/embed_corpus.py --incremental \
       --input "$CORPUS" --output "$INDEX_ROOT" --model "$ENCODER" --json \
  || true

exec "$python" - "$RAY_ADDRESS" "$night" <<'EOF'
import sys

from ray.job_submission import JobStatus, JobSubmissionClient

address, submission_id = sys.argv[1:]
info = JobSubmissionClient(address).get_job_info(submission_id)  # raises (exit 1) if it was never submitted
if info.status in (JobStatus.PENDING, JobStatus.RUNNING):
    print(f"{submission_id} is still {info.status.value} (submitted earlier tonight): not running it twice", file=sys.stderr)
    sys.exit(3)  # like jobs/embed_corpus.py when another run holds the index
code = 1 if info.driver_exit_code is None else info.driver_exit_code  # None: stopped, or the driver never started
print(f"{submission_id}: {info.status.value}, exit code {code}", file=sys.stderr)
sys.exit(code)
EOF
