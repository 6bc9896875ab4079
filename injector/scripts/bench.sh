#!/usr/bin/env bash
# Benchmarks (figures, not pass/fail): the added start-up cost of lumigo_injector.so for a
# non-served process and for served ones, against the same command without it, and its size.
# The payload targets are empty files, so the served figures exclude the tracers' own start-up.
#   usage: bench.sh [RUNS_SCALE]   (1 = default run counts)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-1}
arch=$(uname -m)
so="$LUMIGO_CACHE/injector/dist/$arch/lumigo_injector.so"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gcc -O2 -o "$work/spawnbench" bench/spawnbench.c
gcc -shared -nostdlib -o "$work/empty.so" -x c /dev/null
mkdir -p "$work/lumigo/injector" "$work/lumigo/nodejs" "$work/lumigo/python/bootstrap" "$work/bin"
cp "$so" "$work/lumigo/injector/"
touch "$work/lumigo/nodejs/register.js" "$work/lumigo/python/bootstrap/sitecustomize.py"
# The served path with nothing but the injector's own work: a trivial C program that exports
# Node.js's addon API, so the injector takes it for Node.js.
gcc -O2 -rdynamic -DEXPORT=node_module_register -o "$work/bin/node" tests/c/showenv.c
python=$(python3 -c 'import sys; print(sys.executable)')

bench() { "$work/spawnbench" "$(("$1" * scale))" "$work/lumigo/injector/lumigo_injector.so" "$work/empty.so" "${@:2}"; }
node_options="NODE_OPTIONS=--require $work/lumigo/nodejs/register.js"
echo "lumigo_injector.so ($arch): $(stat -c %s "$so") bytes stripped"
echo "inj-empty: the injector's own work; inj-manual: for a served runtime, what the injector adds"
echo "beyond the runtime's own cost of the variable it sets (the tracers themselves excluded)"
bench 3000 - /bin/true
bench 3000 "$node_options" "$work/bin/node" NODE_OPTIONS
bench 150 "$node_options" node -e 0
bench 300 "PYTHONPATH=$work/lumigo/python/bootstrap" "$python" -c pass
