#!/usr/bin/env bash
# Set up vidfx in ./.venv on a fresh machine (Python 3.11 + pip + gcc), with no GPU needed.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --dev    + test tools (pytest, ruff, selenium) and, as root, Debian's chromium for the page test
#                                  and the packaged pictures and clips (see below)
#   bash scripts/setup.sh --data   runtime + (as root) the Debian packages whose pictures and clips vidfx uses:
#                                  opencv-doc (sample photos for training; sample videos, held out, for
#                                  `vidfx eval --real-footage`)
# CPU machines get the CPU build of torch (torch==2.13.0); set VIDFX_TORCH to another requirement
# (e.g. "torch==2.13.0 --index-url <your CUDA wheel index>") to install a CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
data=0
[ "${1:-}" = "--dev" ] && dev=1 && data=1
[ "${1:-}" = "--data" ] && data=1

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
pip_install() { "$py" -m pip install -q --disable-pip-version-check "$@"; }

if ! "$py" -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  pip_install ${VIDFX_TORCH:-torch==2.13.0}
fi
if [ "$dev" = 1 ]; then
  pip_install -e '.[dev]'
  if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  fi
  # A GStreamer webrtcbin WHIP publisher for the interop test (tests/test_gstreamer_whip.py): it runs under the
  # system Python (/usr/bin/python3), where Debian's python3-gi lives, not in this virtualenv.
  if [ "$(id -u)" = 0 ] && ! /usr/bin/python3 tests/gst_whip_publisher.py --check >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-gi gir1.2-gstreamer-1.0 \
      gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
      gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly >/dev/null) \
      || echo "setup: could not install GStreamer; the GStreamer WHIP test will be skipped" >&2
  fi
else
  pip_install -e .
fi
# Real pictures and held-out real clips ship inside Debian packages (vidfx.data.real_footage, vidfx.data.scenes):
# installed from the package archive, never downloaded from elsewhere, never copied into git.
if [ "$data" = 1 ] && [ "$(id -u)" = 0 ] && [ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    opencv-doc >/dev/null) \
    || echo "setup: could not install opencv-doc; the real-footage tests will be skipped" >&2
fi
