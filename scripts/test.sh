#!/usr/bin/env bash
# Runs the suite from the project's virtualenv. Exits non-zero when pytest ran no test (exit 5):
# an empty run must never pass for a green one.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Redis for tests/test_cache.py: an explicit POOLWORKER_TEST_REDIS_URL wins; otherwise reuse or
# start one. A server started here is stopped on exit. If none can be had, the cache tests
# themselves fail with the reason, and the rest of the suite still runs.
if [ -z "${POOLWORKER_TEST_REDIS_URL:-}" ]; then
    redis_tmp=$(mktemp -d)
    trap '[ -s "$redis_tmp/redis.pid" ] && kill "$(cat "$redis_tmp/redis.pid")" 2>/dev/null; rm -rf "$redis_tmp"' EXIT
    if url=$(bash scripts/ensure-redis.sh "$redis_tmp/redis.pid"); then
        export POOLWORKER_TEST_REDIS_URL=$url
    else
        echo "scripts/ensure-redis.sh found no Redis; cache tests will say why" >&2
    fi
fi

.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no test: failing on purpose" >&2; exit 1; fi
exit "$rc"
