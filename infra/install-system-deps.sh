#!/usr/bin/env bash
# Installs with apt whatever of Kingfisher's system requirements is missing:
# JDK 17+ (Kafka broker, PyFlink), Maven (resolves the jars), redis-server, python3.11 venv support,
# with `--browser` Debian's Chromium for the web page's browser test (Playwright drives it), and with
# `--valgrind` valgrind for `make bench-instructions`.
# Quick and silent when everything is present; safe to run again.
set -euo pipefail

missing=()
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }

if ! command -v java >/dev/null || [[ $(java_major) -lt 17 ]]; then missing+=(openjdk-17-jdk-headless); fi
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
if ! command -v python3.11 >/dev/null; then
  echo "error: python3.11 not found; Kingfisher needs CPython 3.11 (Debian 12: apt-get install python3.11)" >&2
  exit 1
fi
python3.11 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3.11-venv)
if [[ ${1:-} == --browser ]]; then command -v chromium >/dev/null || missing+=(chromium); fi
if [[ ${1:-} == --valgrind ]]; then command -v valgrind >/dev/null || missing+=(valgrind); fi

[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "installing with apt: ${missing[*]}"
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Debian's redis-server package enables a system-wide server on port 6379; Kingfisher runs its
# own (infra/stack.py), so the service this script just installed is stopped and disabled.
if [[ " ${missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
  $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
