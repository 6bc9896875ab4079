#!/usr/bin/env bash
# Locks the Python distro (PyPI lumigo-opentelemetry, the version pinned in payload.sh) for every
# CPython the payload serves, on glibc and musl, x86_64 and aarch64, into payload/python/lock/.
# Run by lock.sh; on its own after a Python-only change:
#   usage: lock-python.sh      (PYTHON_VERSIONS="3.12 3.13" lock-python.sh locks only those)
#
# The payload holds one tree per CPU, read by every interpreter of a container. Most of the
# distro is pure Python and identical for all of them; a few packages are compiled (per
# interpreter version and C library) and a few pure ones resolve older on old interpreters (the
# newest urllib3 needs 3.10). So each package file is locked once, at the most general layer
# every interpreter that uses it can share, and the bootstrap puts, most specific first,
#   cpXY-<libc>    compiled for that interpreter and C library (manylinux = glibc, musllinux)
#   <libc>         compiled once for every version (abi3 wheels: protobuf)
#   cpXY           pure, that version's own pins where they differ from common
#   common         pure, the pins most interpreters share, and the source-only packages
# on sys.path; a more specific layer overrides a more general one. Written here:
#   layers.txt     each layer with the interpreter and platform payload.sh installs it for
#   <layer>.txt    its wheels, each pinned with the sha256 of its x86_64 and aarch64 files
#   sdists.txt     the source-only (pure Python) dependencies, pinned with their archive's hash
#   build.txt      setuptools, hashed, the one build backend those need
# A package the distro requires but nothing the tracer runs imports is left out of every layer on
# purpose (LEFT_OUT below, named in common.txt's header with the reason): the payload is copied
# into every pod that has no image volumes, so its size counts (issue #13).
# A cpXY-<libc>.txt exists, possibly empty, for every interpreter and C library locked: its
# directory in the payload is what tells the bootstrap that the interpreter is served.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
distro=$(sed -n 's/^PYTHON_DISTRO_VERSION=//p' "$here/scripts/payload.sh")
[[ -n $distro ]] || { echo "lock: PYTHON_DISTRO_VERSION not found in payload.sh" >&2; exit 1; }
read -r -a pythons <<<"${PYTHON_VERSIONS:-3.9 3.10 3.11 3.12 3.13}"
# The CPUs of the release image (images/build.sh).
arches=(x86_64 aarch64)
libcs=(manylinux musllinux)
# pip's --platform for a wheel family on a CPU. musllinux_1_2 (musl 1.2, Alpine 3.13 and later)
# is what current wheels are built for; musllinux_1_1 ones run there too.
platform_args() { # platform_args LIBC ARCH
  case $1 in
    manylinux) echo "--platform manylinux2014_$2" ;;
    musllinux) echo "--platform musllinux_1_2_$2 --platform musllinux_1_1_$2" ;;
  esac
}
# Resolving the source-only dependencies runs their build, so each version needs its own
# interpreter here: on PATH, or one of pyenv's (by path: the global pyenv setting is left alone).
interpreter_of() { # interpreter_of X.Y
  local candidate
  for candidate in "python$1" python3 "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/python; do
    if [[ $("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) == "$1" ]]; then
      echo "$candidate"
      return
    fi
  done
  return 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip_quiet=(--quiet --disable-pip-version-check)

for py in "${pythons[@]}"; do
  tag="cp${py/./}"
  interpreter=$(interpreter_of "$py") || { echo "lock: Python $py is not on this machine" >&2; exit 1; }
  echo "lock: lumigo-opentelemetry==$distro for $tag (${libcs[*]} x ${arches[*]}) with $interpreter" >&2
  # This machine's own resolution may use source archives; it names the dependencies that have
  # no wheel at all.
  "$interpreter" -m pip install "${pip_quiet[@]}" --dry-run --ignore-installed --target "$work/t" \
    --report "$work/$tag-native.json" "lumigo-opentelemetry==$distro"
  "$interpreter" - "$work/$tag-native.json" >"$work/$tag-sdists.txt" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    if not item["download_info"]["url"].endswith(".whl"):
        meta = item["metadata"]
        print("%s==%s" % (meta["name"], meta["version"]))
PY
  # Wheels of those, only so that the per-platform resolutions below (which take wheels only)
  # can see them; what is locked is the source archive.
  mkdir -p "$work/$tag-wheelhouse"
  if [[ -s $work/$tag-sdists.txt ]]; then
    "$interpreter" -m pip wheel "${pip_quiet[@]}" --no-deps --use-pep517 -w "$work/$tag-wheelhouse" -r "$work/$tag-sdists.txt"
  fi
  for libc in "${libcs[@]}"; do
    for arch in "${arches[@]}"; do
      # shellcheck disable=SC2046 # platform_args is a list of words
      "$interpreter" -m pip install "${pip_quiet[@]}" --dry-run --ignore-installed --target "$work/t" \
        $(platform_args "$libc" "$arch") --implementation cp --python-version "$py" --only-binary=:all: \
        --find-links "$work/$tag-wheelhouse" --report "$work/$tag-$libc-$arch.json" "lumigo-opentelemetry==$distro" ||
        echo "lock: no complete set of wheels for $tag $libc $arch: that interpreter is left unserved" >&2
    done
  done
done
# The build backend for payload.sh's python3, whichever version it is: the oldest locked
# interpreter's resolution runs on the newer ones too.
interpreter=$(interpreter_of "${pythons[0]}")
"$interpreter" -m pip install "${pip_quiet[@]}" --dry-run --ignore-installed --target "$work/t" \
  --only-binary=:all: --report "$work/build.json" setuptools

mkdir -p "$work/lock"
python3 - "$work" "$work/lock" "$distro" "${arches[*]}" "${libcs[*]}" "${pythons[@]}" <<'PY'
import json, re, sys
from collections import defaultdict
from pathlib import Path

work, dest, distro = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
arches, libcs, versions = sys.argv[4].split(), sys.argv[5].split(), sys.argv[6:]
tag_of = {v: "cp" + v.replace(".", "") for v in versions}
version_key = {tag_of[v]: tuple(map(int, v.split("."))) for v in versions}


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


# Required by the distro, imported by nothing the tracer runs: left out of every layer. Check with
# the e2e test (tests/harness.py: it fails when the tree holds any of these, and each served
# interpreter's traced run must not import it) before adding a name.
LEFT_OUT = {
    "setuptools": "11 MB. lumigo-opentelemetry requires it for pkg_resources, which only wrapt's "
                  "discover_post_import_hooks imports, called only by autowrapt's .pth start-up "
                  "hook: the payload's packages are appended to sys.path, so no .pth of theirs "
                  "runs, and the bootstrap imports the distro itself (wrapt skips the hooks "
                  "without pkg_resources anyway). Not imported by a traced process on CPython 3.9 "
                  "to 3.13.",
}


def resolved(report):
    """{name: (display name, version, url, sha256)} of one pip report."""
    found = {}
    for item in json.load(open(report))["install"]:
        meta, info = item["metadata"], item["download_info"]
        # (A wheel built here from a source archive has no published hash; it is not locked.)
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        found[canonical(meta["name"])] = (meta["name"], meta["version"], info["url"], digest)
    return found


# The source-only packages, by the archive this machine resolved; they are built at payload time
# into common, so they must be the same for every interpreter.
sdists = {}
for v in versions:
    for name, (display, version, url, digest) in resolved(work / f"{tag_of[v]}-native.json").items():
        if url.endswith(".whl") or name in LEFT_OUT:
            continue
        if sdists.setdefault(name, (display, version, digest)) != (display, version, digest):
            sys.exit(f"lock: the source-only {display} resolves differently for {tag_of[v]}; "
                     "only one version of a source-only package can be locked")

# identity[(tag, libc)][name]: what that interpreter and C library install, the same package
# file for every CPU: (display, version, its sha256 per CPU, pure).
identity, dropped = {}, []
for v in versions:
    tag = tag_of[v]
    for libc in libcs:
        reports = [work / f"{tag}-{libc}-{arch}.json" for arch in arches]
        if not all(r.is_file() for r in reports):
            dropped.append(f"{tag}-{libc}")
            continue
        per_arch = [resolved(r) for r in reports]
        pins = [{n: p[1] for n, p in found.items()} for found in per_arch]
        if any(p != pins[0] for p in pins):
            diff = sorted(set(pins[0].items()) ^ {i for p in pins[1:] for i in p.items()})
            print(f"lock: {tag} {libc}: the CPUs resolve different trees ({diff}); left unserved",
                  file=sys.stderr)
            dropped.append(f"{tag}-{libc}")
            continue
        found = {}
        for name, (display, version, url, _) in per_arch[0].items():
            if name in LEFT_OUT:
                continue
            if name in sdists:
                found[name] = ("sdist", version)
                continue
            hashes = tuple(sorted({f[name][3] for f in per_arch}))
            if None in hashes:
                sys.exit(f"lock: {display} {version} for {tag} {libc} comes from no index (a local "
                         "find-links?); only published, hashed files can be locked")
            files = [f[name][2].rsplit("/", 1)[-1] for f in per_arch]
            found[name] = (display, version, hashes, all(f.endswith("-none-any.whl") for f in files))
        identity[(tag, libc)] = found
if not identity:
    sys.exit("lock: no interpreter could be locked")

served = sorted(identity, key=lambda s: (version_key[s[0]], s[1]))
layers = defaultdict(dict)  # layer: {name: identity}
for name in sorted({n for found in identity.values() for n in found}):
    users = defaultdict(list)  # identity: [(tag, libc)] that install it
    for s in served:
        if name in identity[s] and identity[s][name][0] != "sdist":
            users[identity[s][name]].append(s)
    # common holds the pure file most interpreters use (on a tie, the newest's); the others
    # override it from a more specific layer.
    pure = [i for i in users if i[3]]
    base = max(pure, key=lambda i: (len(users[i]), max(version_key[t] for t, _ in users[i])), default=None)
    for ident, who in users.items():
        if ident == base:
            layers["common"][name] = ident
            continue
        rest = set(who)
        for libc in libcs:
            everyone = {s for s in served if s[1] == libc}
            if everyone <= rest:
                layers[libc][name] = ident
                rest -= everyone
        for tag in sorted({t for t, _ in rest}, key=version_key.get):
            everyone = {s for s in served if s[0] == tag}
            if ident[3] and everyone <= rest:
                layers[tag][name] = ident
                rest -= everyone
        for tag, libc in rest:
            layers[f"{tag}-{libc}"][name] = ident


def block(display, version, hashes):
    lines = [f"{display}=={version}"] + [f"--hash=sha256:{h}" for h in hashes]
    return " \\\n    ".join(lines) + "\n"


head = f"# Generated by injector/scripts/lock-python.sh (lumigo-opentelemetry=={distro}); do not edit.\n"
newest = max(versions, key=lambda v: version_key[tag_of[v]])
rows = []
for s in served:  # every served interpreter has its layer file, even one with nothing compiled
    layers.setdefault(f"{s[0]}-{s[1]}", {})
order = ["common", *libcs, *(tag_of[v] for v in versions), *(f"{t}-{l}" for t, l in served)]
for layer in [name for name in order if name in layers]:
    tag, _, libc = layer.partition("-")
    if layer in libcs:
        tag, libc = "", layer
    if layer == "common":
        tag, libc = "", ""
    version = next(v for v in versions if tag_of[v] == tag) if tag else newest
    what = {"common": "pure Python, for every interpreter unless a more specific layer overrides it"}.get(
        layer, f"for {'CPython ' + version if tag else 'every CPython'}"
               f"{' on ' + libc if libc else ', pure Python, any C library'}")
    body = "".join(block(d, v, h) for _, (d, v, h, _) in sorted(layers[layer].items()))
    left_out = "".join(f"# Left out on purpose: {name}: {why}\n" for name, why in sorted(LEFT_OUT.items())
                       if layer == "common")
    (dest / f"{layer}.txt").write_text(head + f"# The {layer} layer: {what}.\n" + left_out + body)
    # A layer that serves several versions is installed as the newest; Requires-Python was
    # checked by each version's own resolution.
    rows.append(f"{layer:<18} {version:<7} {libc or 'any':<10} {'checked' if tag else 'ignored'}\n")
(dest / "layers.txt").write_text(
    head + "# layer            python  platform   requires-python   (read by payload.sh)\n" + "".join(rows))
(dest / "sdists.txt").write_text(
    head + "# Pure Python, built at payload time with build.txt's setuptools into common.\n"
    + "".join(block(d, v, (h,)) for _, (d, v, h) in sorted(sdists.items())))
build = resolved(work / "build.json")
(dest / "build.txt").write_text(
    head + "# The build backend of sdists.txt.\n"
    + "".join(block(d, v, (h,)) for _, (d, v, _, h) in sorted(build.items())))
for layer in [name for name in order if name in layers]:
    print(f"lock: {layer}: {len(layers[layer])} wheels", file=sys.stderr)
print(f"lock: left out on purpose (LEFT_OUT): {' '.join(sorted(LEFT_OUT))}", file=sys.stderr)
print(f"lock: {len(sdists)} source archives; served: {' '.join(f'{t}-{l}' for t, l in served)}"
      + (f"; NOT served: {' '.join(dropped)}" if dropped else ""), file=sys.stderr)
PY
rm -rf "$here/payload/python/lock"
mkdir -p "$here/payload/python"
cp -r "$work/lock" "$here/payload/python/lock"
echo "lock: written under $here/payload/python/lock" >&2
