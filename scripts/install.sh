#!/usr/bin/env bash
# One-step setup on a fresh Debian/Ubuntu machine: system packages for headless Qt (Xvfb, xcb),
# then a virtual environment in .venv with the plugin and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
    libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
    libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1 >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$PYTHON" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
# torch 2.14.1 pairs with torchvision 0.29.1 (open_clip needs torchvision).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test,slides,cluster,models]"
# For the DICOM WSI tests only: wsidicomizer (which writes a DICOM WSI from the sample) pins an older
# wsidicom than the one the plugin reads with, so it lives in its own folder, used by the test in a subprocess.
.venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/wsidicomizer \
  wsidicomizer==0.26.1 wsidicom==0.31.0 opentile==0.22.0 tiffslide==3.0.1 czifile==2019.7.2.3 PyTurboJPEG==1.8.3 \
  defusedxml==0.7.1 xsdata==26.10 ome-types==0.7.0 marshmallow==3.26.2 dicomweb-client==0.59.3 universal_pathlib==0.2.6
echo "installed: $(.venv/bin/python -c 'import napari_clipmed, torch, open_clip, napari; print("napari-clipmed", napari_clipmed.__version__, "| torch", torch.__version__, "| open_clip", open_clip.__version__, "| napari", napari.__version__)')"
