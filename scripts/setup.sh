#!/usr/bin/env bash
# Set up QuadraNAS on a fresh machine: data (Debian package), pinned CPU torch, the package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "warning: could not install dataset-fashion-mnist; use dataset=digits or see README" >&2
  else
    echo "note: Fashion-MNIST not found; as root run 'apt-get install dataset-fashion-mnist'," \
         "or pass dataset=digits (built in)" >&2
  fi
fi

# torch first: the pinned 2.13.0 is a local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
"$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
# the package with the test tools and the nnmeter extra (nn-meter, onnxsim): its tests need them
"$PY" -m pip install -q --disable-pip-version-check -e ".[test,nnmeter]"
