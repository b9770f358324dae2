#!/usr/bin/env bash
# Builds every `gpu`-tagged test here (nvcc needed, no GPU needed) and packs
# them into a self-contained folder, with the shared libraries they load that
# are not part of glibc, so they run on a GPU machine that has only a driver.
#
#   bash scripts/gpu_bundle.sh OUT_DIR      # here
#   OUT_DIR/run_all.sh                      # on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_bundle.sh OUT_DIR}
bash scripts/setup.sh >/dev/null
targets=$(bazel query 'attr(tags, "\bgpu\b", tests(//...))' 2>/dev/null)
[[ -n "$targets" ]] || { echo "no gpu-tagged tests" >&2; exit 1; }
# shellcheck disable=SC2086
bazel build $targets
bin=$(bazel info bazel-bin 2>/dev/null)
mkdir -p "$out/bin" "$out/lib"
names=()
for t in $targets; do
  rel=${t#//}; rel=${rel/://}
  name=$(basename "$rel")
  cp -f "$bin/$rel" "$out/bin/$name"
  names+=("$name")
  ldd "$bin/$rel" | awk '/=> \//{print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*) ;;
      *) cp -Lf "$lib" "$out/lib/" ;;
    esac
  done
done
cat > "$out/run_all.sh" <<RUN
#!/usr/bin/env bash
# Runs the bundled GPU tests; exit status is non-zero if any fails.
cd "\$(dirname "\$0")"
export LD_LIBRARY_PATH="\$PWD/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
rc=0; passed=0; failed=0
for t in ${names[*]}; do
  echo "== \$t"
  if ./bin/\$t; then passed=\$((passed+1)); else failed=\$((failed+1)); rc=1; fi
done
echo "\$passed passed, \$failed failed"
exit \$rc
RUN
chmod +x "$out/run_all.sh"
echo "bundled ${#names[@]} GPU test(s) into $out ($(du -sh "$out" | cut -f1))"
