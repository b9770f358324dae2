#!/usr/bin/env bash
# Builds every `gpu`-tagged test and the GPU benchmark here (nvcc needed, no
# GPU needed) and packs them into a self-contained folder, with the shared
# libraries they load that are not part of glibc or the driver, and
# compute-sanitizer when this machine has it, so they run on a GPU machine
# that has only a driver.
#
#   bash scripts/gpu_bundle.sh OUT_DIR      # here
#   OUT_DIR/run_all.sh [--bench]            # on the GPU machine
#
# run_all.sh runs each GPU test, then the kernel test under
# compute-sanitizer memcheck, then (with --bench) tests/bench:gpu_bench.
# The libraries are only needed where CUDA is not installed; pass
# --no-libs to leave them out (libcublasLt alone is several hundred MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_bundle.sh OUT_DIR [--no-libs]}
libs=1
[[ "${2:-}" == "--no-libs" ]] && libs=0
bash scripts/setup.sh >/dev/null
targets=$(bazel query 'attr(tags, "\bgpu\b", tests(//...))' 2>/dev/null)
[[ -n "$targets" ]] || { echo "no gpu-tagged tests" >&2; exit 1; }
# shellcheck disable=SC2086
bazel build $targets //tests/bench:gpu_bench
bin=$(bazel info bazel-bin 2>/dev/null)
mkdir -p "$out/bin" "$out/lib"
names=()
for t in $targets //tests/bench:gpu_bench; do
  rel=${t#//}; rel=${rel/://}
  name=$(basename "$rel")
  cp -f "$bin/$rel" "$out/bin/$name"
  [[ "$t" == *gpu_bench ]] || names+=("$name")
  [[ $libs == 1 ]] || continue
  ldd "$bin/$rel" | awk '/=> \//{print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*) ;;
      *) cp -Lf "$lib" "$out/lib/" ;;
    esac
  done
done
sanitizer=""
for d in /usr/local/cuda/compute-sanitizer "$(dirname "$(command -v compute-sanitizer 2>/dev/null || echo /nonexistent)")"; do
  if [[ -x "$d/compute-sanitizer" ]]; then
    cp -rL "$d" "$out/compute-sanitizer"
    sanitizer=bundled
    break
  fi
done
cat > "$out/run_all.sh" <<RUN
#!/usr/bin/env bash
# Runs the bundled GPU tests (and memcheck, and with --bench the benchmark);
# exit status is non-zero if any fails.
cd "\$(dirname "\$0")"
export LD_LIBRARY_PATH="\$PWD/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
rc=0; passed=0; failed=0
for t in ${names[*]}; do
  echo "== \$t"
  if ./bin/\$t; then passed=\$((passed+1)); else failed=\$((failed+1)); rc=1; fi
done
san=\$PWD/compute-sanitizer/compute-sanitizer
[[ -x \$san ]] || san=\$(command -v compute-sanitizer || true)
if [[ -n "\$san" ]]; then
  echo "== compute-sanitizer --tool memcheck box_copy_gpu_test"
  if "\$san" --tool memcheck --error-exitcode 1 ./bin/box_copy_gpu_test; then passed=\$((passed+1)); else failed=\$((failed+1)); rc=1; fi
else
  echo "== compute-sanitizer not found: memcheck NOT run"; failed=\$((failed+1)); rc=1
fi
echo "\$passed passed, \$failed failed"
if [[ "\${1:-}" == "--bench" ]]; then
  echo "== gpu_bench"; ./bin/gpu_bench || rc=1
fi
exit \$rc
RUN
chmod +x "$out/run_all.sh"
echo "bundled ${#names[@]} GPU test(s) and gpu_bench into $out ($(du -sh "$out" | cut -f1))${sanitizer:+, with compute-sanitizer}"
