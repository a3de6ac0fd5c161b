#!/usr/bin/env bash
# Set up ./.venv with latbench and its dependencies; idempotent, safe to re-run.
#   scripts/setup.sh          what `latbench` and `nas` need
#   scripts/setup.sh --test   also the test tools, the TFLite and farm extras, and (as root) Debian's
#                             openssh-server and adb, which the SSH and ADB tests talk to
set -euo pipefail
cd "$(dirname "$0")/.."

test_deps=0
for arg in "$@"; do
  case "$arg" in
    --test) test_deps=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --test or nothing)" >&2; exit 2 ;;
  esac
done

if [ "$test_deps" = 1 ] && { [ ! -x /usr/sbin/sshd ] || ! command -v adb >/dev/null || ! command -v mksh >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing openssh-server and adb (Debian packages) for the SSH/ADB tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server adb mksh busybox >/dev/null
  else
    echo "setup: openssh-server or adb missing; their tests will be skipped (sudo apt-get install openssh-server adb)" >&2
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@"; }
pip install --upgrade pip
# Torch first, pinned: an unpinned `torch` pulls a multi-GB CUDA build on Linux.
# Set TORCH_SPEC to choose another build (e.g. TORCH_SPEC="torch==2.13.0+cpu").
pip install "${TORCH_SPEC:-torch==2.13.0}"
if [ "$test_deps" = 1 ]; then
  pip install -e ".[test,tflite,farm]"
else
  pip install -e .
fi
echo "setup: ready ($(.venv/bin/python -c 'import latbench, torch; print("latbench", latbench.__version__, "torch", torch.__version__)'))"
