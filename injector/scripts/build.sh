#!/usr/bin/env bash
# Builds lumigo_injector.so for x86_64 and aarch64 from the same source into
# $LUMIGO_CACHE/injector/dist/<arch>/. rust-lld links it directly (no C compiler driver), so
# no C runtime start files and no default libraries are pulled in: the result has no
# DT_NEEDED and no dynamic symbol. `-z defs` turns any undefined symbol, including the panic
# handler's deliberate one, into a link error.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?}" "${LUMIGO_CACHE:?}"
for arch in x86_64 aarch64; do
  target="$arch-unknown-linux-gnu"
  cargo rustc --quiet --locked --release --lib --target "$target" -- \
    -C linker=rust-lld -C linker-flavor=ld.lld -C link-arg=-zdefs -C link-arg=--build-id=none
  out="$LUMIGO_CACHE/injector/dist/$arch"
  mkdir -p "$out"
  cp "$CARGO_TARGET_DIR/$target/release/liblumigo_injector.so" "$out/lumigo_injector.unstripped.so"
  objcopy=objcopy
  [[ $arch == "$(uname -m)" ]] || objcopy="$arch-linux-gnu-objcopy"
  "$objcopy" --strip-all "$out/lumigo_injector.unstripped.so" "$out/lumigo_injector.so"
  echo "built $out/lumigo_injector.so ($(stat -c %s "$out/lumigo_injector.so") bytes)"
done
