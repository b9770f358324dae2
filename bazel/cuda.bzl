"""`cuda_library`: compile .cu files with nvcc into a cc_library.

Objects carry SASS for sm_80 and sm_90 plus compute_90 PTX, so newer GPUs
JIT the PTX. Without a CUDA toolkit (see cuda_configure.bzl) the targets
are marked incompatible: `bazel build //...` skips them and everything that
depends on them, instead of failing.
"""

load("@local_cuda//:defs.bzl", "CUDA_AVAILABLE", "CUDA_HOME")

_NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "--expt-relaxed-constexpr",
    "-Xcompiler=-fPIC",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]

def cuda_library(name, srcs, hdrs = [], deps = [], copts = [], visibility = None, **kwargs):
    """A cc_library whose .cu sources are compiled by nvcc.

    Args:
      name: the cc_library's name.
      srcs: .cu files; each becomes one object file.
      hdrs: headers (.h/.cuh) that the .cu files and dependants include.
      deps: cc_library dependencies; their headers are visible to nvcc only
        if they are in this repository or under /usr/include.
      copts: extra nvcc flags.
      visibility: as for cc_library.
      **kwargs: passed to the cc_library.
    """
    objs = []
    for src in srcs:
        base = src[:-3] if src.endswith(".cu") else src
        obj = "_nvcc/{}/{}.pic.o".format(name, base)
        native.genrule(
            name = "{}_{}_nvcc".format(name, base.replace("/", "_")),
            srcs = [src] + hdrs,
            outs = [obj],
            cmd = " ".join([
                # nvcc finds cicc and ptxas relative to its real path, so it
                # runs from the toolkit rather than through a symlink.
                CUDA_HOME + "/bin/nvcc",
            ] + _NVCC_FLAGS + copts + [
                "-I.",
                "-I$(GENDIR)",
                "-c $(location {})".format(src),
                "-o $@",
            ]),
            target_compatible_with = _compat(),
            message = "nvcc " + src,
        )
        objs.append(":" + obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cudart"],
        visibility = visibility,
        target_compatible_with = _compat(),
        **kwargs
    )

def _compat():
    return [] if CUDA_AVAILABLE else ["@platforms//:incompatible"]

def cuda_only():
    """target_compatible_with for targets (tests, benchmarks) that need CUDA."""
    return _compat()
