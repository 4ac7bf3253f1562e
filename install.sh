#!/usr/bin/env bash
# Install kaon, with every extra and the test tools, into the active Python environment.
# PyTorch is installed (CPU build 2.13.0) only when none is present, so your own CUDA build is kept.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "kaon: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
    echo "kaon: installing torch==2.13.0"
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
# Pin the torch now present, so no extra (sentence-transformers, opacus, ...) can swap it for another build.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PYTHON" -c 'import torch; print(f"torch=={torch.__version__}")' > "$constraints"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -c "$constraints" -e ".[all,dev]"
echo "kaon: installed $("$PYTHON" -c 'import kaon; print(kaon.__version__)'). Try: kaon quickstart"
