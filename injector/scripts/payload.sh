#!/usr/bin/env bash
# Assembles the payload tree the init container copies to /opt/lumigo, into DIR:
#   DIR/injector/lumigo_injector.so   DIR/nodejs/   DIR/python/   DIR/java/
# The same script is what the image build runs. Downloads are cached under $LUMIGO_CACHE,
# keyed by version, so a warm run only copies.
#   usage: payload.sh DIR [x86_64|aarch64]
set -euo pipefail

NODE_DISTRO_VERSION=1.53.1
PYTHON_DISTRO_VERSION=1.0.201
JAVA_AGENT_VERSION=2.33.1

dest=${1:?usage: payload.sh DIR [x86_64|aarch64]}
arch=${2:-$(uname -m)}
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${LUMIGO_CACHE:?LUMIGO_CACHE must be set}/injector/payload
so="$LUMIGO_CACHE/injector/dist/$arch/lumigo_injector.so"
[[ -f $so ]] || { echo "payload: $so is missing; run 'just injector::build' first" >&2; exit 1; }
mkdir -p "$cache" "$dest"

# Each download goes to a temporary directory renamed into place when complete, so an
# interrupted run never leaves a half-filled cache entry that looks finished.
fill() { # fill CACHE_DIR COMMAND...: runs COMMAND with $tmp, once per CACHE_DIR
  local final=$1; shift
  [[ -d $final ]] && return
  tmp=$(mktemp -d "$final.tmp.XXXX")
  if ! "$@"; then rm -rf "$tmp"; return 1; fi
  mv "$tmp" "$final"
}

node_fetch() {
  npm install --silent --no-audit --no-fund --omit=dev --ignore-scripts --prefix "$tmp" \
    "@lumigo/opentelemetry@$NODE_DISTRO_VERSION"
}
# Compiled dependencies make the Python tree specific to one interpreter version and CPU.
py_tag=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
pip_quiet=(--quiet --disable-pip-version-check)
python_fetch() {
  local spec="lumigo-opentelemetry==$PYTHON_DISTRO_VERSION"
  if [[ $arch == "$(uname -m)" ]]; then
    python3 -m pip install "${pip_quiet[@]}" --root-user-action=ignore --target "$tmp" "$spec"
    return
  fi
  # A foreign CPU can only take prebuilt wheels; the few dependencies published as source only
  # (pure Python) are first built into wheels here, where the platform-specific ones are ignored.
  local wheels rc=0
  wheels=$(mktemp -d)
  python3 -m pip wheel "${pip_quiet[@]}" -w "$wheels" "$spec" &&
    python3 -m pip install "${pip_quiet[@]}" --root-user-action=ignore --target "$tmp" --find-links "$wheels" \
      --platform "manylinux2014_$arch" --only-binary=:all: --python-version "${py_tag#cp}" "$spec" || rc=$?
  rm -rf "$wheels"
  return "$rc"
}
java_fetch() {
  local url="https://repo1.maven.org/maven2/io/opentelemetry/javaagent/opentelemetry-javaagent/$JAVA_AGENT_VERSION/opentelemetry-javaagent-$JAVA_AGENT_VERSION.jar"
  local sha1
  curl -fsSL --retry 3 -o "$tmp/javaagent.jar" "$url" && sha1=$(curl -fsSL --retry 3 "$url.sha1") &&
    echo "$sha1  $tmp/javaagent.jar" | sha1sum -c --quiet
}

fill "$cache/nodejs-$NODE_DISTRO_VERSION" node_fetch
fill "$cache/python-$PYTHON_DISTRO_VERSION-$py_tag-$arch" python_fetch
# The Java agent is optional: the tree is complete without it, and the injector leaves
# JAVA_TOOL_OPTIONS alone when the jar is absent.
java_ok=1
fill "$cache/java-$JAVA_AGENT_VERSION" java_fetch || { java_ok=; echo "payload: Java agent unavailable, skipped" >&2; }

rm -rf "$dest/injector" "$dest/nodejs" "$dest/python" "$dest/java"
mkdir -p "$dest/injector" "$dest/nodejs" "$dest/python/bootstrap"
cp "$so" "$dest/injector/lumigo_injector.so"
cp -r "$cache/nodejs-$NODE_DISTRO_VERSION/node_modules" "$dest/nodejs/"
cp "$here/payload/nodejs/register.js" "$dest/nodejs/register.js"
cp -r "$cache/python-$PYTHON_DISTRO_VERSION-$py_tag-$arch" "$dest/python/packages"
cp "$here/payload/python/sitecustomize.py" "$dest/python/bootstrap/sitecustomize.py"
if [[ -n $java_ok ]]; then
  mkdir -p "$dest/java"
  cp "$cache/java-$JAVA_AGENT_VERSION/javaagent.jar" "$dest/java/javaagent.jar"
fi
echo "payload: assembled $dest ($arch, python $py_tag${java_ok:+, java agent $JAVA_AGENT_VERSION})"
