#!/usr/bin/env bash
# Run the CPU image with no network at all (`docker run --network none`; /dev/shm enlarged as in
# docker-compose.yml, since vLLM's engine process needs more than Docker's 64 MB) and query the server
# from inside the container: readiness, the model list, a real embedding and a real chat completion from the bundled
# models. Prints each answer and the timings; docs/docker.md records a run.
#   IMAGE     the image to run (default local-llm-interface:cpu)
#   TIMEOUT   seconds to wait for /health/ready (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
image=${IMAGE:-local-llm-interface:cpu}
timeout=${TIMEOUT:-600}
name=local-llm-smoke-$$
log() { printf '[docker-smoke] %s\n' "$*" >&2; }

bash scripts/docker-daemon.sh
finish() {
    status=$?
    if [ "$status" != 0 ] && docker inspect "$name" >/dev/null 2>&1; then
        log "failed; the server's log ends:"
        docker logs --tail 80 "$name" 2>&1 | sed 's/^/    /' >&2
    fi
    docker rm -f "$name" >/dev/null 2>&1 || true
    exit "$status"
}
trap finish EXIT
log "$image: $(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec) uncompressed"
start=$(date +%s)
docker run -d --name "$name" --network none --shm-size 1g "$image" >/dev/null
log "started $name with --network none; user inside: $(docker exec "$name" id -un) ($(docker exec "$name" id -u))"

# The queries, run by the container's own Python against its loopback (there is no other network).
docker exec -i -e TIMEOUT="$timeout" "$name" python3 - <<'PY'
import json, os, time, urllib.error, urllib.request

BASE = "http://127.0.0.1:15530"


def call(path, body=None):
    request = urllib.request.Request(
        BASE + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    return status, json.loads(payload or b"null"), time.monotonic() - started


deadline = time.monotonic() + float(os.environ["TIMEOUT"])
started = time.monotonic()
ready_path = "/health/ready"
while True:
    try:
        status, body, _ = call(ready_path)
    except (urllib.error.URLError, ConnectionError):
        status, body = None, "not listening yet"
    if status == 200:
        break
    if status == 404 and ready_path == "/health/ready":
        # A source without the readiness route: go on with liveness, so the rest is still tried, and fail at
        # the end (Docker's HEALTHCHECK would never pass on this image).
        print("GET /health/ready -> 404: this image's server has no readiness route; waiting on /health")
        ready_path = "/health"
        continue
    if time.monotonic() > deadline:
        raise SystemExit(f"not ready after {os.environ['TIMEOUT']} s: {status} {body}")
    time.sleep(1)
print(f"GET {ready_path} -> 200 after {time.monotonic() - started:.1f} s: {json.dumps(body)}")

status, body, seconds = call("/v1/models")
print(f"GET /v1/models -> {status} ({seconds:.2f} s): {[m['id'] for m in body['data']]}")
assert status == 200

status, body, seconds = call("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["What is RAG?", "Paris"]})
vectors = [item["embedding"] for item in body["data"]]
print(
    f"POST /v1/embeddings -> {status} ({seconds:.2f} s, first load included): {len(vectors)} vectors of "
    f"{len(vectors[0])} dimensions, first values {[round(x, 4) for x in vectors[0][:3]]}, usage {body['usage']}"
)
assert status == 200 and len(vectors[0]) == 384

question = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 40,
}
status, body, seconds = call("/v1/chat/completions", question)
print(f"POST /v1/chat/completions -> {status} ({seconds:.2f} s, first load included): {json.dumps(body)[:600]}")
assert status == 200
status, body, seconds = call("/v1/chat/completions", question)
answer = body["choices"][0]["message"]["content"]
print(f"POST /v1/chat/completions again -> {status} ({seconds:.2f} s, loaded): {answer!r}, usage {body['usage']}")
assert status == 200
if ready_path != "/health/ready":
    raise SystemExit("FAILED: no /health/ready in this image (everything else answered)")
PY

log "all answered, $(($(date +%s) - start)) s after docker run"
# Docker's own view of the HEALTHCHECK (it probes every 30 s, so it may still say starting).
log "docker health status: $(docker inspect -f '{{.State.Health.Status}}' "$name")"
log "peak memory: $(docker stats --no-stream --format '{{.MemUsage}}' "$name")"
