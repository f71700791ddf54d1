#!/usr/bin/env bash
# Installs the system packages StreamChar needs when they are missing: espeak-ng and ffmpeg (the package),
# chromium and its driver (the browser tests of `make test`; skip them with STREAMCHAR_NO_BROWSER=1).
set -euo pipefail
missing=()
if ! ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so'; then missing+=(espeak-ng libespeak-ng1); fi
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then missing+=(ffmpeg); fi
if [ -z "${STREAMCHAR_NO_BROWSER:-}" ]; then
  if ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
  if ! command -v chromedriver >/dev/null 2>&1; then missing+=(chromium-driver); fi
fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing system packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
  echo "error: ${missing[*]} missing and not root; install them with your package manager, then rerun" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# apt and debconf talk on stderr even when all goes well: what they say is printed only on failure
log=$(mktemp)
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; echo "error: installing ${missing[*]} failed (apt output above)" >&2; exit 1
fi
rm -f "$log"
