#!/usr/bin/env bash
# Regenerates the payload's dependency locks from the distro versions pinned in payload.sh:
#   payload/nodejs/package.json, package-lock.json   npm's lock; every package has a sha512 integrity
#   payload/python/lock/cpXY/wheels.txt               the distro's whole tree, pinned with sha256 hashes
#                                                     of the wheels installed for x86_64 and aarch64
#   payload/python/lock/cpXY/sdists.txt               the few dependencies published as source only
#                                                     (pure Python), pinned with their archive's hash
#   payload/python/lock/cpXY/build.txt                setuptools, hashed, the one build backend those need
#   payload/maven.sha256                              the Java agent's and the SPI's jars (sha1-checked
#                                                     against Maven Central when they are locked)
# payload.sh installs from nothing else (`npm ci`, `pip install --require-hashes --no-deps`), so
# a build can only differ from another by what these files say. Run after bumping a distro
# version, then review and commit the diff.
#   usage: lock.sh            (PYTHON_VERSIONS="3.11 3.12" lock.sh to lock more interpreters)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# The versions, read from the one place a bump is made.
version_of() { sed -n "s/^$1=//p" "$here/scripts/payload.sh"; }
node_version=$(version_of NODE_DISTRO_VERSION)
python_version=$(version_of PYTHON_DISTRO_VERSION)
java_version=$(version_of JAVA_AGENT_VERSION)
spi_version=$(version_of JAVA_SPI_VERSION)
[[ -n $node_version && -n $python_version && -n $java_version && -n $spi_version ]] ||
  { echo "lock: versions not found in payload.sh" >&2; exit 1; }
# The interpreters the payload is built for: Debian bookworm's python3 in the image build and
# Debian's python3.11 in the e2e shop image. Each needs that interpreter on this machine, since
# resolving the source-only dependencies runs their build.
read -r -a pythons <<<"${PYTHON_VERSIONS:-3.11}"
# The CPUs of the release image (images/build.sh). Only glibc wheels: the distro's compiled
# dependencies are loaded by the CPython of a glibc image.
arches=(x86_64 aarch64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip_quiet=(--quiet --disable-pip-version-check)

echo "lock: @lumigo/opentelemetry@$node_version" >&2
mkdir -p "$work/node"
cat >"$work/node/package.json" <<EOF
{
  "name": "lumigo-autotrace-nodejs",
  "private": true,
  "description": "The Node.js tracer of the autotrace payload; locked by injector/scripts/lock.sh",
  "dependencies": {
    "@lumigo/opentelemetry": "$node_version"
  }
}
EOF
(cd "$work/node" && npm install --package-lock-only --silent --no-audit --no-fund --ignore-scripts --omit=dev)
node - "$work/node/package-lock.json" <<'JS'
const lock = require(process.argv[2]);
const bad = Object.entries(lock.packages)
  .filter(([path, pkg]) => path && !pkg.link && !/^sha512-/.test(pkg.integrity || ""))
  .map(([path]) => path);
if (bad.length) {
  console.error(`lock: no sha512 integrity for ${bad.join(", ")}`);
  process.exit(1);
}
JS
mkdir -p "$here/payload/nodejs"
cp "$work/node/package.json" "$work/node/package-lock.json" "$here/payload/nodejs/"

for py in "${pythons[@]}"; do
  tag="cp${py/./}"
  interpreter=
  for candidate in "python$py" python3; do
    if command -v "$candidate" >/dev/null &&
      [[ $("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])') == "$py" ]]; then
      interpreter=$candidate
      break
    fi
  done
  [[ -n $interpreter ]] || { echo "lock: Python $py is not on this machine" >&2; exit 1; }
  echo "lock: lumigo-opentelemetry==$python_version for $tag (${arches[*]})" >&2
  out=$work/$tag
  mkdir -p "$out/wheelhouse"
  # This machine's own resolution may use source archives; it names the dependencies that have
  # no wheel at all.
  "$interpreter" -m pip install "${pip_quiet[@]}" --dry-run --ignore-installed --target "$out/t" \
    --report "$out/native.json" "lumigo-opentelemetry==$python_version"
  "$interpreter" - "$out/native.json" >"$out/sdists.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    if not item["download_info"]["url"].endswith(".whl"):
        meta = item["metadata"]
        print(f'{meta["name"]}=={meta["version"]}')
PY
  # Wheels of those, only so that the per-CPU resolutions below (which take wheels only) can
  # see them; what is locked is the source archive.
  if [[ -s $out/sdists.txt ]]; then
    "$interpreter" -m pip wheel "${pip_quiet[@]}" --no-deps -w "$out/wheelhouse" -r "$out/sdists.txt"
  fi
  for arch in "${arches[@]}"; do
    "$interpreter" -m pip install "${pip_quiet[@]}" --dry-run --ignore-installed --target "$out/t" \
      --platform "manylinux2014_$arch" --implementation cp --python-version "$py" --only-binary=:all: \
      --find-links "$out/wheelhouse" --report "$out/$arch.json" "lumigo-opentelemetry==$python_version"
  done
  "$interpreter" -m pip install "${pip_quiet[@]}" --dry-run --ignore-installed --target "$out/t" \
    --implementation cp --python-version "$py" --only-binary=:all: --report "$out/build.json" setuptools
  mkdir -p "$here/payload/python/lock/$tag"
  "$interpreter" - "$here/payload/python/lock/$tag" "$out" "$tag" "${arches[@]}" <<'PY'
import json, sys
from pathlib import Path

dest, work, tag, arches = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]

def resolved(report):
    """{name: (version, url, sha256)} of one pip report."""
    found = {}
    for item in json.load(open(report))["install"]:
        meta, info = item["metadata"], item["download_info"]
        found[meta["name"].lower()] = (meta["version"], info["url"], info["archive_info"]["hashes"]["sha256"])
    return found

native = resolved(work / "native.json")
per_arch = {arch: resolved(work / f"{arch}.json") for arch in arches}
pins = {name: version for name, (version, _, _) in native.items()}
for arch, found in per_arch.items():
    theirs = {name: version for name, (version, _, _) in found.items()}
    if theirs != pins:
        diff = sorted(set(theirs.items()) ^ set(pins.items()))
        sys.exit(f"lock: {arch} resolves another tree than this machine: {diff}")

def block(name, version, hashes):
    lines = [f"{name}=={version}"] + [f"--hash=sha256:{h}" for h in sorted(hashes)]
    return " \\\n    ".join(lines) + "\n"

head = (f"# Generated by injector/scripts/lock.sh for CPython {tag} on "
        f"{', '.join(arches)} (manylinux2014); do not edit.\n")
wheels, sdists = [], []
for name in sorted(pins):
    version, url, digest = native[name]
    if url.endswith(".whl"):
        hashes = {per_arch[arch][name][2] for arch in arches}
        wheels.append(block(name, version, hashes))
    else:
        sdists.append(block(name, version, {digest}))
build = [block(name, version, {digest}) for name, (version, _, digest) in sorted(resolved(work / "build.json").items())]
(dest / "wheels.txt").write_text(head + "".join(wheels))
(dest / "sdists.txt").write_text(head + "# Pure Python, built here with build.txt's setuptools.\n" + "".join(sdists))
(dest / "build.txt").write_text(head + "# The build backend of sdists.txt.\n" + "".join(build))
print(f"lock: {tag}: {len(wheels)} wheels, {len(sdists)} source archives", file=sys.stderr)
PY
done
echo "lock: Maven Central jars (agent $java_version, SPI $spi_version)" >&2
{
  echo "# Generated by injector/scripts/lock.sh; do not edit."
  for path in "io/opentelemetry/javaagent/opentelemetry-javaagent/$java_version/opentelemetry-javaagent-$java_version.jar" \
    "io/opentelemetry/opentelemetry-sdk-extension-autoconfigure-spi/$spi_version/opentelemetry-sdk-extension-autoconfigure-spi-$spi_version.jar"; do
    url="https://repo1.maven.org/maven2/$path"
    curl -fsSL --retry 3 -o "$work/jar" "$url"
    echo "$(curl -fsSL --retry 3 "$url.sha1")  $work/jar" | sha1sum -c --quiet
    echo "$(sha256sum "$work/jar" | cut -d' ' -f1)  $path"
  done
} >"$work/maven.sha256"
cp "$work/maven.sha256" "$here/payload/maven.sha256"
echo "lock: written under $here/payload; review and commit the diff" >&2
