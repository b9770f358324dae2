#!/usr/bin/env bash
# Builds every `gpu`-tagged test and the GPU benchmark here (nvcc needed, no
# GPU needed) and packs them into a self-contained folder, with the shared
# libraries they load that are not part of glibc or the driver, and
# compute-sanitizer when this machine has it, so they run on a GPU machine
# that has only a driver.
#
#   bash scripts/gpu_bundle.sh OUT_DIR      # here
#   OUT_DIR/run_all.sh [--bench [ARGS]]      # on the GPU machine
#
# Each test may run WSYNC_GPU_TEST_TIMEOUT seconds (300), the benchmark
# WSYNC_GPU_BENCH_TIMEOUT (600); ARGS go to gpu_bench (say --quick).
#
# run_all.sh runs each GPU test, then the kernel test under
# compute-sanitizer memcheck, then (with --bench) tests/bench:gpu_bench.
# The libraries are only needed where CUDA is not installed; pass
# --no-libs to leave them all out, or --no-cuda-libs to leave out only the
# CUDA toolkit's big ones (cuBLAS, cuBLASLt, NCCL: over 700 MiB) and write
# OUT_DIR.tar.gz beside the folder, small enough to carry to a lent device
# (../shared/GPU.md). run_all.sh then looks for each library the binaries
# miss under the CUDA toolkit and Python's nvidia-* packages there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_bundle.sh OUT_DIR [--no-libs]}
libs=1
case "${2:-}" in
  "") ;;
  --no-libs) libs=0 ;;
  --no-cuda-libs) libs=cuda-less ;;
  *) echo "gpu_bundle.sh: unknown option '$2' (--no-libs or --no-cuda-libs)" >&2; exit 2 ;;
esac
bash scripts/setup.sh >/dev/null
targets=$(bazel query 'attr(tags, "\bgpu\b", tests(//...))' 2>/dev/null)
[[ -n "$targets" ]] || { echo "no gpu-tagged tests" >&2; exit 1; }
# shellcheck disable=SC2086
bazel build $targets //tests/bench:gpu_bench //daemon:wsyncd
bin=$(bazel info bazel-bin 2>/dev/null)
mkdir -p "$out/bin" "$out/lib" "$out/runfiles/wsync/daemon"
# Tests that start real daemons find wsyncd as a Bazel runfile.
cp -f "$bin/daemon/wsyncd" "$out/runfiles/wsync/daemon/wsyncd"
names=()
for t in $targets //tests/bench:gpu_bench //daemon:wsyncd; do
  rel=${t#//}; rel=${rel/://}
  name=$(basename "$rel")
  [[ "$t" == //daemon:wsyncd ]] || cp -f "$bin/$rel" "$out/bin/$name"
  [[ "$t" == *gpu_bench || "$t" == //daemon:wsyncd ]] || names+=("$name")
  [[ $libs != 0 ]] || continue
  ldd "$bin/$rel" | awk '/=> \//{print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*) ;;
      libcublas*|libnccl*) [[ $libs == cuda-less ]] || cp -Lf "$lib" "$out/lib/" ;;
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
export TEST_SRCDIR="\$PWD/runfiles" TEST_WORKSPACE=wsync
# Libraries left out of the bundle (--no-cuda-libs): find each one the
# binaries miss in the CUDA toolkit or Python's nvidia-* wheels here.
missing=\$(for b in bin/* runfiles/wsync/daemon/wsyncd; do ldd "\$b" 2>/dev/null | awk '/not found/{print \$1}'; done | sort -u)
for l in \$missing; do
  f=\$(find /usr/local/cuda*/ /usr/lib /usr/local/lib /opt -name "\$l" 2>/dev/null | head -1)
  [[ -n "\$f" ]] || f=\$(find / -xdev -name "\$l" 2>/dev/null | head -1)
  if [[ -z "\$f" ]]; then echo "run_all.sh: \$l not found on this machine" >&2; continue; fi
  echo "run_all.sh: \$l from \$(dirname "\$f")"
  export LD_LIBRARY_PATH="\$LD_LIBRARY_PATH:\$(dirname "\$f")"
done
rc=0; passed=0; failed=0
for t in ${names[*]}; do
  echo "== \$t"
  if timeout "\${WSYNC_GPU_TEST_TIMEOUT:-300}" ./bin/\$t; then passed=\$((passed+1)); else failed=\$((failed+1)); rc=1; fi
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
  echo "== gpu_bench"; timeout "\${WSYNC_GPU_BENCH_TIMEOUT:-600}" ./bin/gpu_bench "\${@:2}" || rc=1
fi
exit \$rc
RUN
chmod +x "$out/run_all.sh"
if [[ $libs == cuda-less ]]; then
  tar -C "$(dirname "$out")" -czf "$out.tar.gz" "$(basename "$out")"
  echo "wrote $out.tar.gz ($(du -sh "$out.tar.gz" | cut -f1))"
fi
echo "bundled ${#names[@]} GPU test(s) and gpu_bench into $out ($(du -sh "$out" | cut -f1))${sanitizer:+, with compute-sanitizer}"
