#!/usr/bin/env bash
# Installs the system packages StreamChar needs (espeak-ng, ffmpeg) when they are missing.
set -euo pipefail
missing=()
if ! ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so'; then missing+=(espeak-ng libespeak-ng1); fi
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then missing+=(ffmpeg); fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing system packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
  echo "error: ${missing[*]} missing and not root; install them with your package manager, then rerun" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
