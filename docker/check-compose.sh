#!/usr/bin/env sh
# `make compose-check`: Docker Compose v2's own parser on both compose files, where Docker
# is installed (the test suite checks the YAML without Docker: tests/deploy/test_compose.py).
# Runs in a scratch copy with throwaway secrets, and checks that a missing Redis password is
# refused rather than silently empty.
set -eu
cd "$(dirname "$0")/.."
docker compose version >/dev/null 2>&1 || { echo "compose-check: needs Docker Compose v2 (docker compose)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r docker docker-compose.yml docker-compose.worker.yml "$work"/
mkdir "$work/secrets"
echo "FLOWER_BASIC_AUTH=admin:compose-check" > "$work/secrets/flower.env"
head -c 48 /dev/zero | tr '\0' x > "$work/secrets/jwt-secret"
cd "$work"
export CXR_REDIS_PASSWORD=p CXR_REDIS_HOST=10.0.0.1 CXR_WORKER_HOSTNAME=gpu1 CXR_DATA_DIR=/srv/cxr
docker compose -f docker-compose.yml --profile cpu config -q
docker compose -f docker-compose.worker.yml config -q
if CXR_REDIS_PASSWORD= docker compose -f docker-compose.yml config -q 2>/dev/null; then
  echo "compose-check: an empty CXR_REDIS_PASSWORD was accepted" >&2; exit 1
fi
echo "compose-check: both files accepted; a missing Redis password refused"
