#!/usr/bin/env bash
# Nightly incremental re-index through `ray job submit`, for a plain cron on a machine that can
# reach the Ray head. crontab line (02:15 every night, one log per night):
#
#   15 2 * * * cd /opt/l2v-ray && deploy/cron/nightly-reindex.sh >> /var/log/l2v-reindex-$(date +\%F).log 2>&1
#
# The submission id is the date: a retried night (cron re-fired, a host rebooted) is refused by
# Ray as a duplicate instead of running twice. Settings come from the environment:
#   RAY_ADDRESS   the head's dashboard, e.g. http://ray-head:8265
#   CORPUS        the input parquet (folder, glob or s3:// URI)
#   INDEX_ROOT    the shared output root (NFS), holds versions/ and CURRENT
#   ENCODER       the exported encoder folder (shared)
# Exit codes (what cron / an alerting wrapper sees): those of jobs/embed_corpus.py, see deploy/README.md.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS, e.g. http://ray-head:8265}"
: "${CORPUS:?set CORPUS to the input parquet}"
: "${INDEX_ROOT:?set INDEX_ROOT to the shared index folder}"
: "${ENCODER:?set ENCODER to the exported encoder folder}"
night="l2v-reindex-$(date -u +%Y-%m-%d)"

ray job submit \
  --address "$RAY_ADDRESS" \
  --submission-id "$night" \
  --working-dir . \
  --runtime-env deploy/runtime_env.yaml \
  -- python jobs/embed_corpus.py --incremental \
       --input "$CORPUS" --output "$INDEX_ROOT" --model "$ENCODER" --json
