#!/usr/bin/env bash
# Assembles the payload tree the init container copies to /opt/lumigo, into DIR:
#   DIR/injector/lumigo_injector.so   DIR/nodejs/   DIR/python/   DIR/java/
# The same script is what the image build runs. Downloads are cached under $LUMIGO_CACHE,
# keyed by version, so a warm run only copies.
#   usage: payload.sh DIR [x86_64|aarch64]
set -euo pipefail

NODE_DISTRO_VERSION=1.53.1
# The bundler that makes the Node.js distro one file (scripts/bundle-nodejs.js); a devDependency
# of the npm lock, so it is installed from the lock too.
ESBUILD_VERSION=0.28.2
PYTHON_DISTRO_VERSION=1.0.201
JAVA_AGENT_VERSION=2.33.1
# The autoconfigure SPI the Lumigo extension compiles against: the SDK version the agent bundles
# (its inst/io/opentelemetry/sdk/autoconfigure/spi/version.properties).
JAVA_SPI_VERSION=1.67.0

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

# The Node.js and Python trees are installed from the locks lock.sh writes (`just injector::lock`)
# and from nothing else: every archive is checked against its recorded hash, and nothing is
# resolved here, so every build of a version gets the same files. A lock that does not name the
# version pinned above was not regenerated after a bump.
stale_lock() { echo "payload: $1 does not pin $2; run 'just injector::lock'" >&2; exit 1; }
lock_hash() { cat "$@" | sha256sum | cut -c1-16; }
node_lock=$here/payload/nodejs
grep -qF "\"@lumigo/opentelemetry\": \"$NODE_DISTRO_VERSION\"" "$node_lock/package.json" ||
  stale_lock "$node_lock/package.json" "@lumigo/opentelemetry $NODE_DISTRO_VERSION"
grep -qF "\"esbuild\": \"$ESBUILD_VERSION\"" "$node_lock/package.json" ||
  stale_lock "$node_lock/package.json" "esbuild $ESBUILD_VERSION"
# The distro and esbuild are installed (no install scripts: esbuild's JavaScript API finds its
# binary in the @esbuild/<platform> package npm installs for this machine), the distro is
# bundled into lumigo.js, and the npm tree is thrown away: the cache entry holds only the bundle.
node_fetch() {
  mkdir "$tmp/npm" && cp "$node_lock/package.json" "$node_lock/package-lock.json" "$tmp/npm/" &&
    (cd "$tmp/npm" && npm ci --loglevel=error --no-audit --no-fund --ignore-scripts) &&
    node "$here/scripts/bundle-nodejs.js" "$tmp/npm" "$tmp" &&
    rm -rf "$tmp/npm"
}
# The Python tree serves every CPython and C library the lock names, in layers (lock-python.sh
# says which): the pure packages once, in common, and per interpreter and C library only what
# differs (compiled wheels; a version's own pins). The bootstrap puts the right ones on sys.path.
py_lock=$here/payload/python/lock
[[ -f $py_lock/layers.txt ]] ||
  { echo "payload: $py_lock/layers.txt is missing; run injector/scripts/lock-python.sh" >&2; exit 1; }
grep -qxF "lumigo-opentelemetry==$PYTHON_DISTRO_VERSION \\" "$py_lock"/*.txt ||
  stale_lock "$py_lock" "lumigo-opentelemetry $PYTHON_DISTRO_VERSION"
py_sets=$(awk '$1 ~ /^cp[0-9]+-/ { printf "%s%s", sep, $1; sep = " " }' "$py_lock/layers.txt")
pip_quiet=(--quiet --disable-pip-version-check --root-user-action=ignore)
python_fetch() {
  # The wheels of the target CPU whichever CPU builds, so a native and a cross build install the
  # same files. Each layer's directory exists even when empty: a set's directory is what tells
  # the bootstrap its interpreter is served. No .pyc files (--no-compile; python_prune says why).
  local layer version platform requires args
  while read -r layer version platform requires; do
    [[ -z $layer || $layer == \#* ]] && continue
    mkdir -p "$tmp/$layer"
    grep -q '^[^#]' "$py_lock/$layer.txt" || continue
    args=(--python-version "$version")
    case $platform in
      musllinux) args+=(--platform "musllinux_1_2_$arch" --platform "musllinux_1_1_$arch") ;;
      *) args+=(--platform "manylinux2014_$arch") ;; # manylinux, or pure wheels ("any")
    esac
    [[ $requires == checked ]] || args+=(--ignore-requires-python)
    python3 -m pip install "${pip_quiet[@]}" --require-hashes --no-deps --only-binary=:all: --no-compile \
      --implementation cp "${args[@]}" --target "$tmp/$layer" -r "$py_lock/$layer.txt" || return
  done <"$py_lock/layers.txt"
  if grep -q '^[^#]' "$py_lock/sdists.txt"; then
    # The source-only dependencies are pure Python, so building them here suits any CPU and
    # interpreter. Build isolation would fetch an unpinned setuptools; the locked one is put on
    # the path instead.
    local backend rc=0
    backend=$(mktemp -d)
    python3 -m pip install "${pip_quiet[@]}" --require-hashes --no-deps --only-binary=:all: \
      --target "$backend" -r "$py_lock/build.txt" &&
      PYTHONPATH=$backend python3 -m pip install "${pip_quiet[@]}" --require-hashes --no-deps --no-compile \
        --no-binary=:all: --no-build-isolation --use-pep517 --target "$tmp/common" -r "$py_lock/sdists.txt" || rc=$?
    rm -rf "$backend"
    [[ $rc == 0 ]] || return "$rc"
  fi
  python_prune "$tmp"
}
# The tree is copied into every pod that has no image volumes (issue #13: the whole payload within
# 60 MB, tests/harness.py checks it), so what no traced process reads is left out:
# - bytecode: a .pyc serves one interpreter version, and pip's were stale anyway once copied (they
#   record the source's mtime, which the copies here and in the pod's init container do not keep),
#   so every version compiled the sources in memory at each start already; 12 MB;
# - type stubs (.pyi), protobuf's .proto sources (the _pb2 modules embed their descriptors);
# - pip's bookkeeping in *.dist-info (RECORD, INSTALLER, REQUESTED; RECORD would no longer match):
#   importlib.metadata reads METADATA, entry_points.txt and top_level.txt, which stay;
# - console scripts (bin/, for the building python3), and the test suite and CI helpers that
#   lumigo-opentelemetry's wheel ships as the top-level packages test and ci, which nothing imports;
# - the debug information and static symbol tables of the compiled modules (the target CPU's
#   binutils strip; the dynamic symbols stay). Wheels are hash-checked before this, at install.
# Packages the distro requires but does not import are left out of the lock itself (lock-python.sh).
python_prune() { # python_prune DIR
  local strip=$arch-linux-gnu-strip
  command -v "$strip" >/dev/null ||
    { echo "payload: $strip not found (Debian: binutils-${arch//_/-}-linux-gnu)" >&2; return 1; }
  find "$1" -name __pycache__ -type d -prune -exec rm -rf {} + &&
    find "$1" -type f \( -name '*.pyc' -o -name '*.pyi' -o -name '*.proto' \
      -o -path '*.dist-info/RECORD' -o -path '*.dist-info/INSTALLER' -o -path '*.dist-info/REQUESTED' \) -delete &&
    rm -rf "$1"/*/bin "$1"/*/test "$1"/*/ci &&
    find "$1" -type f -name '*.so' -exec "$strip" --strip-unneeded {} +
}
maven_path() { echo "$1/$2/$3/$2-$3.jar"; } # maven_path GROUP_PATH ARTIFACT VERSION
maven_fetch() { # maven_fetch GROUP_PATH ARTIFACT VERSION FILE: one jar from Maven Central, sha1-checked
  local url
  url="https://repo1.maven.org/maven2/$(maven_path "$1" "$2" "$3")"
  local sha1
  curl -fsSL --retry 3 -o "$tmp/$4" "$url" && sha1=$(curl -fsSL --retry 3 "$url.sha1") &&
    echo "$sha1  $tmp/$4" | sha1sum -c --quiet
}
# The sha1 beside a jar on Maven Central only tells that a download is whole; the sha256 lock.sh
# recorded tells it is the jar that was locked. Checked on the cached copy too, on every run (a
# few milliseconds): a jar that differs stops the build rather than leave the tree without Java.
maven_lock=$here/payload/maven.sha256
maven_check() { # maven_check FILE GROUP_PATH ARTIFACT VERSION
  local path want got
  path=$(maven_path "$2" "$3" "$4")
  want=$(awk -v p="$path" '$2 == p { print $1 }' "$maven_lock")
  [[ -n $want ]] || stale_lock "$maven_lock" "$path"
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $got == "$want" ]] || { echo "payload: $1 ($path) has sha256 $got, the lock says $want" >&2; return 1; }
}
java_fetch() { maven_fetch io/opentelemetry/javaagent opentelemetry-javaagent "$JAVA_AGENT_VERSION" javaagent.jar; }
java_spi_fetch() {
  maven_fetch io/opentelemetry opentelemetry-sdk-extension-autoconfigure-spi "$JAVA_SPI_VERSION" autoconfigure-spi.jar
}
# The upstream agent with the Lumigo extension (payload/java) embedded as
# extensions/lumigo-extension.jar, which the agent loads from inside its own jar. It maps the
# LUMIGO_* variables to the agent's settings. Both jars are written with fixed timestamps.
java_src=$here/payload/java
java_build() {
  local classes
  classes=$(mktemp -d)
  find "$java_src/src" -name '*.java' -print0 | xargs -0 javac -Xlint:-options --release 8 -nowarn \
      -cp "$cache/java-spi-$JAVA_SPI_VERSION/autoconfigure-spi.jar" -d "$classes" &&
    cp -r "$java_src/resources/." "$classes/" &&
    python3 - "$classes" "$cache/java-$JAVA_AGENT_VERSION/javaagent.jar" "$tmp/javaagent.jar" <<'PY'
import io, os, shutil, sys, zipfile
classes, upstream, out = sys.argv[1:]
stamp = (1980, 2, 1, 0, 0, 0)
ext = io.BytesIO()
with zipfile.ZipFile(ext, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", stamp), "Manifest-Version: 1.0\r\n\r\n")
    for root, dirs, files in os.walk(classes):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(root, f)
            name = os.path.relpath(path, classes)
            if name == "META-INF/MANIFEST.MF":
                continue
            info = zipfile.ZipInfo(name, stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as fh:
                z.writestr(info, fh.read())
shutil.copyfile(upstream, out)
with zipfile.ZipFile(out, "a") as z:
    if any(n.startswith("extensions/") for n in z.namelist()):
        sys.exit("upstream agent already embeds extensions/")
    z.writestr(zipfile.ZipInfo("extensions/lumigo-extension.jar", stamp), ext.getvalue())
PY
  local rc=$?
  rm -rf "$classes"
  return "$rc"
}

# Keyed by the lock's contents too: a regenerated lock of the same version installs anew (and the
# Node.js bundle by its script).
node_out=$cache/nodejs-$NODE_DISTRO_VERSION-$(lock_hash "$node_lock/package-lock.json" "$here/scripts/bundle-nodejs.js")
# The Python tree by the code that installs and prunes it too.
python_out=$cache/python-$PYTHON_DISTRO_VERSION-$arch-$(lock_hash "$py_lock"/*.txt <(declare -f python_fetch python_prune))
fill "$node_out" node_fetch
# Bundles of earlier locks or scripts (each a whole npm tree before the bundling).
for old in "$cache/nodejs-"*; do
  [[ $old == "$node_out" || $old == *.tmp.* || ! -d $old ]] || rm -rf "$old"
done
fill "$python_out" python_fetch
# Python trees of earlier locks of this CPU (the other CPU's and in-progress ones are kept).
for old in "$cache/python-"*; do
  [[ $old == "$python_out" || $old == *.tmp.* || $old != *"-$arch-"* || ! -d $old ]] || rm -rf "$old"
done
# The Java agent is optional: the tree is complete without it, and the injector leaves
# JAVA_TOOL_OPTIONS alone when the jar is absent. Without the extension (no javac, say) it is
# left out too: the bare upstream agent would export to localhost. The built jar is keyed by
# both versions and a hash of the extension's sources, so a changed source rebuilds it.
java_hash=$(cd "$java_src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
java_out=$cache/java-lumigo-$JAVA_AGENT_VERSION-$JAVA_SPI_VERSION-$java_hash
java_ok=1
if ! command -v javac >/dev/null; then
  java_ok=; echo "payload: javac not found, Java agent skipped" >&2
elif ! fill "$cache/java-$JAVA_AGENT_VERSION" java_fetch || ! fill "$cache/java-spi-$JAVA_SPI_VERSION" java_spi_fetch; then
  java_ok=; echo "payload: Java agent unavailable, skipped" >&2
elif ! maven_check "$cache/java-$JAVA_AGENT_VERSION/javaagent.jar" io/opentelemetry/javaagent opentelemetry-javaagent "$JAVA_AGENT_VERSION" ||
  ! maven_check "$cache/java-spi-$JAVA_SPI_VERSION/autoconfigure-spi.jar" io/opentelemetry opentelemetry-sdk-extension-autoconfigure-spi "$JAVA_SPI_VERSION"; then
  exit 1
elif ! fill "$java_out" java_build; then
  java_ok=; echo "payload: Lumigo Java extension did not build, Java agent skipped" >&2
else
  # Builds of earlier sources (not in-progress temporary directories).
  for old in "$cache/java-lumigo-"*; do
    [[ $old == "$java_out" || $old == *.tmp.* || ! -d $old ]] || rm -rf "$old"
  done
fi

rm -rf "$dest/injector" "$dest/nodejs" "$dest/python" "$dest/java"
mkdir -p "$dest/injector" "$dest/nodejs" "$dest/python/bootstrap"
cp "$so" "$dest/injector/lumigo_injector.so"
cp "$node_out/"* "$dest/nodejs/"
cp "$here/payload/nodejs/register.js" "$dest/nodejs/register.js"
cp -r "$python_out" "$dest/python/packages"
cp "$here/payload/python/sitecustomize.py" "$dest/python/bootstrap/sitecustomize.py"
if [[ -n $java_ok ]]; then
  mkdir -p "$dest/java"
  cp "$java_out/javaagent.jar" "$dest/java/javaagent.jar"
fi
# Readable by every user: the init container copies as the pod's uid, and the app containers read
# the copy as theirs. (The cache entries come from mktemp -d, which makes them 0700.)
chmod -R a+rX "$dest"
echo "payload: assembled $dest ($arch, python ${py_sets// /,}${java_ok:+, java agent $JAVA_AGENT_VERSION + lumigo extension $java_hash})"
