#!/usr/bin/env bash
# The container image drill (not part of `make test`): builds the Dockerfile with buildah and runs the
# image, printing the build time and the image size. Checks:
#   1. the image runs as a non-root user, has a HEALTHCHECK on /ready, ships no compilers, make or test
#      dependencies (gcc, cc, g++, make; pytest, moto, playwright);
#   2. `darkroom serve` inside answers the demo endpoint (CPU, the tiny models the image brings), and
#      the image's own HEALTHCHECK command succeeds against it;
#   3. the data volume survives a restart: a queue request finished before it is still there, with
#      its file served;
#   4. SIGTERM drains: a request running when the signal comes finishes before the exit (code 0) and
#      is not run again.
# It runs the image with podman (runc, limits within the machine's: podman's defaults are refused on
# the development machines); where podman still cannot start containers it says so, with podman's
# error, and runs the image with buildah's chroot isolation instead (the image's rootfs, user,
# environment and working directory, the host's network), binding a data folder seeded from the
# image as a named volume would be.
#
#   scripts/drill_image.sh     # as root (apt-get install buildah podman runc debootstrap)
#
# The base image is pulled, else built from Debian's packages (scripts/build_base_image.sh).
# BUILD_FLAGS: more `buildah bud` flags, e.g. `-v /var/tmp/wheels:/wheels:ro -v pip.conf:/etc/pip.conf:ro`
# for a local wheel cache. SKIP_BUILD=1 runs the image already tagged $IMAGE; RUNNER=buildah runs it
# with buildah even where podman could. Nothing leaves loopback but the build's package downloads.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/darkroom:drill}
BASE=docker.io/library/python:3.11-slim-bookworm
B=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
P=(podman --storage-driver "${STORAGE_DRIVER:-vfs}")
KEY=drill-key
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
APP=darkroom/demo-flux-2
FAST='{"prompt": "drill", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}}'
SLOW='{"prompt": "slow", "num_inference_steps": 12, "num_images": 2, "image_size": {"width": 512, "height": 512}}'
WORK=$(mktemp -d /var/tmp/darkroom-drill.XXXXXX)
RUN_PID=
FAILURES=()

expect() { # expect WHAT COMMAND...: runs the command, records a failure without stopping
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; FAILURES+=("$what"); fi
}
cleanup() {
  if [ -n "$RUN_PID" ]; then stop_server >/dev/null 2>&1 || true; fi
  "${P[@]}" rm -f darkroom-drill >/dev/null 2>&1 || true
  "${B[@]}" rm darkroom-drill >/dev/null 2>&1 || true
  "${P[@]}" volume rm -f darkroom-drill-data >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. build -----------------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
  if ! "${P[@]}" image exists "$BASE"; then
    "${P[@]}" pull "$BASE" 2>"$WORK/pull.log" || {
      echo "cannot pull $BASE ($(tail -n1 "$WORK/pull.log")); building it from Debian's packages"
      scripts/build_base_image.sh
    }
  fi
  # The ComfyUI archive, where this machine has it (GitHub may be out of reach, as here), and this
  # machine's CA certificates (a proxy that inspects TLS signs with its own: pip needs it too).
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/darkroom
  certs=/etc/ssl/certs/ca-certificates.crt
  mounts=()
  [ -d "$cache" ] && mounts+=(-v "$cache:/cache/darkroom:ro")
  [ -f "$certs" ] && mounts+=(-v "$certs:$certs:ro")
  started=$(date +%s)
  # shellcheck disable=SC2086 # BUILD_FLAGS is a list of flags
  nice -n 19 "${B[@]}" bud --isolation chroot --format docker --layers=false "${mounts[@]}" ${BUILD_FLAGS:-} \
    -t "$IMAGE" .
  echo "figure: build_s=$(( $(date +%s) - started ))"
fi
size=$("${P[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "figure: image_bytes=$size ($(( size / 1000000 )) MB)"

# --- 2. what the image says of itself ------------------------------------------------------------
user=$("${P[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
health=$("${P[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
expect "runs as a non-root user ($user)" test -n "$user" -a "$user" != root -a "$user" != 0
expect "HEALTHCHECK on /ready: $health" grep -q '/ready' <<<"$health"

# --- 3. run it ----------------------------------------------------------------------------------
# podman's defaults ask for more open files and processes than an unprivileged (no CAP_SYS_RESOURCE)
# machine may grant, and crun cannot run with hybrid cgroups: runc, with limits inside the host's.
# No systemd here to time the HEALTHCHECK: the drill runs it itself (podman healthcheck run).
RUN_FLAGS=(--runtime runc --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096
  --health-interval=disable)
ENVS=(DARKROOM_DEVICE=cpu "DARKROOM_API_KEYS=$KEY" DARKROOM_SHUTDOWN_GRACE_S=300)
"${P[@]}" rm -f darkroom-drill >/dev/null 2>&1 || true
"${P[@]}" volume rm -f darkroom-drill-data >/dev/null 2>&1 || true
if [ "${RUNNER:-}" != buildah ] && "${P[@]}" create --name darkroom-drill "${RUN_FLAGS[@]}" -p "127.0.0.1:$PORT:8000" \
    "${ENVS[@]/#/--env=}" -v darkroom-drill-data:/app/data "$IMAGE" >"$WORK/podman.log" 2>&1 \
    && "${P[@]}" start darkroom-drill >>"$WORK/podman.log" 2>&1; then
  RUNNER=podman
else
  [ -f "$WORK/podman.log" ] && echo "podman cannot run the container here: $(tr '\n' ' ' <"$WORK/podman.log")"
  "${P[@]}" rm -f darkroom-drill >/dev/null 2>&1 || true
  RUNNER=buildah
  "${B[@]}" from --name darkroom-drill "$IMAGE" >/dev/null
  config=(--env DARKROOM_HOST=127.0.0.1 --env "DARKROOM_PORT=$PORT")
  for e in "${ENVS[@]}"; do config+=(--env "$e"); done
  "${B[@]}" config "${config[@]}" darkroom-drill
  # A data folder seeded from the image's /app/data, as a new named volume is.
  mount=$("${B[@]}" mount darkroom-drill)
  mkdir -p "$WORK/data" && cp -a "$mount/app/data/." "$WORK/data/"
  "${B[@]}" umount darkroom-drill >/dev/null
fi
echo "runner: $RUNNER"

in_container() { # a command inside the running container (podman exec; buildah run beside it)
  if [ "$RUNNER" = podman ]; then "${P[@]}" exec darkroom-drill "$@"
  else "${B[@]}" run --isolation chroot darkroom-drill -- "$@"; fi
}
start_server() {
  if [ "$RUNNER" = podman ]; then
    "${P[@]}" start darkroom-drill >/dev/null  # started already the first time: no change then
    RUN_PID=podman
  else
    "${B[@]}" run --isolation chroot -v "$WORK/data:/app/data" darkroom-drill -- darkroom serve \
      >>"$WORK/serve.log" 2>&1 &
    RUN_PID=$!
  fi
}
server_pid() { # the `darkroom serve` process under buildah run
  local pids=$RUN_PID frontier=$RUN_PID children
  while [ -n "$frontier" ]; do
    children=$(for p in $frontier; do ps -o pid= --ppid "$p"; done | tr -s ' \n' ' ')
    pids="$pids $children"; frontier=$children
  done
  for p in $pids; do
    # the venv's Python running the script, not buildah's own processes (which name it too)
    if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q '^/app/.venv/bin/python[0-9.]* /app/.venv/bin/darkroom serve'
    then echo "$p"; return; fi
  done
}
stop_server() { # SIGTERM to darkroom serve (podman stop sends the image's STOPSIGNAL); its exit code
  local pid code=0
  if [ "$RUN_PID" = podman ]; then
    "${P[@]}" stop --time 330 darkroom-drill >/dev/null
    code=$("${P[@]}" inspect --format '{{.State.ExitCode}}' darkroom-drill)
  else
    pid=$(server_pid)
    if [ -n "$pid" ]; then
      echo "SIGTERM to $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
      kill -TERM "$pid"
    fi
    wait "$RUN_PID" || code=$?
  fi
  RUN_PID=
  return "$code"
}
server_log() {
  if [ "$RUNNER" = podman ]; then "${P[@]}" logs darkroom-drill 2>&1; else cat "$WORK/serve.log"; fi
}
api() { # api METHOD PATH [BODY]: the body of the answer; fails on a status >= 400
  curl -fsS -X "$1" -H "Authorization: Key $KEY" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$URL$2"
}
json() { python3 -c "import json, sys; print(eval(sys.argv[1], {}, {'d': json.load(sys.stdin)}))" "$1"; }
wait_ready() {
  local started=$SECONDS
  until curl -fsS "$URL/ready" >/dev/null 2>&1; do
    [ $((SECONDS - started)) -lt 900 ] || { echo "not ready in 900 s"; server_log | tail -20; return 1; }
    sleep 2
  done
  echo "figure: ready_s=$((SECONDS - started))"
}
wait_status() { # wait_status REQUEST_ID STATUS
  local started=$SECONDS status
  while :; do
    status=$(api GET "/queue/$APP/requests/$1/status" | json 'd["status"]')
    [ "$status" = "$2" ] && return 0
    [ $((SECONDS - started)) -lt 600 ] || { echo "$1 is $status after 600 s"; return 1; }
    sleep 0.5
  done
}

start_server
wait_ready
# shellcheck disable=SC2016 # expanded inside the container
expect "no compilers, make or test dependencies; not uid 0" in_container sh -c '
  test "$(id -u)" != 0 || { echo "uid 0"; exit 1; }
  for tool in gcc cc g++ c++ make; do command -v "$tool" && exit 1; done
  for module in pytest moto playwright schemathesis; do
    python -c "import $module" 2>/dev/null && { echo "$module"; exit 1; }
  done
  exit 0'
health_cmd=$("${P[@]}" image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" \
  | python3 -c 'import json, sys; test = json.load(sys.stdin); print(" ".join(map(repr, test[1:])))')
if [ "$RUNNER" = podman ]; then
  expect "podman healthcheck run (the image's HEALTHCHECK) says healthy" "${P[@]}" healthcheck run darkroom-drill
else
  # the host's network here: the server listens on $PORT, not the image's 8000
  expect "the image's HEALTHCHECK command succeeds against the running server (port $PORT)" \
    eval "in_container ${health_cmd//:8000/:$PORT}"
fi

answer=$(api POST "/run/$APP" "$FAST")
image_url=$(json 'd["images"][0]["url"]' <<<"$answer")
expect "the demo endpoint answers: $(head -c 160 <<<"$answer")..." \
  curl -fsS -o "$WORK/demo.png" -H "Authorization: Key $KEY" "$image_url"

kept=$(api POST "/queue/$APP" "$FAST" | json 'd["request_id"]')
wait_status "$kept" COMPLETED
kept_result=$(api GET "/queue/$APP/requests/$kept")
kept_url=$(json 'd["images"][0]["url"]' <<<"$kept_result")

# --- 4. SIGTERM drains; 3. the volume survives the restart ---------------------------------------
slow=$(api POST "/queue/$APP" "$SLOW" | json 'd["request_id"]')
wait_status "$slow" IN_PROGRESS
reruns_before=$(server_log | grep -c "running it again" || true)
signalled=$SECONDS
code=0; stop_server || code=$?
echo "figure: sigterm_exit_s=$((SECONDS - signalled)) exit_code=$code"
expect "SIGTERM: darkroom serve exits 0" test "$code" = 0

start_server
wait_ready
expect "the data volume survives the restart: the earlier request's result is unchanged" \
  test "$(api GET "/queue/$APP/requests/$kept")" = "$kept_result"
expect "... and its file is still served" curl -fsS -o /dev/null -H "Authorization: Key $KEY" "$kept_url"
wait_status "$slow" COMPLETED
reruns=$(( $(server_log | grep -c "running it again" || true) - reruns_before ))
expect "SIGTERM drained: the running request finished before the exit (run again: $reruns times)" \
  test "$reruns" = 0
stop_server || true

if [ ${#FAILURES[@]} -gt 0 ]; then
  echo "drill failed: ${#FAILURES[@]} checks"; server_log | tail -30; exit 1
fi
echo "drill passed"
