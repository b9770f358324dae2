"""CUDA toolkit detection (a repository rule).

`local_cuda` is a repository rule. It looks for nvcc in $CUDA_HOME, then
/usr/local/cuda. When found it exposes the toolkit's headers and static
runtime as @local_cuda//:cuda_headers and @local_cuda//:cudart, and sets
CUDA_AVAILABLE in @local_cuda//:defs.bzl. Set WSYNC_CUDA=0 in the
environment (or `--repo_env=WSYNC_CUDA=0`) to build without CUDA even when
a toolkit is installed.

Without a toolkit the same targets exist but are incompatible with every
platform, so that `bazel build //...` skips what needs CUDA.
"""

_DEFAULT_CANDIDATES = ["/usr/local/cuda"]

def _local_cuda_impl(ctx):
    enabled = ctx.os.environ.get("WSYNC_CUDA", "auto")
    home = None
    if enabled != "0":
        candidates = []
        if ctx.os.environ.get("CUDA_HOME"):
            candidates.append(ctx.os.environ["CUDA_HOME"])
        candidates += _DEFAULT_CANDIDATES
        for c in candidates:
            if ctx.path(c + "/bin/nvcc").exists:
                home = c
                break
        if home == None and enabled == "1":
            fail("WSYNC_CUDA=1 but no nvcc found under {}".format(candidates))

    ctx.file("WORKSPACE", 'workspace(name = "local_cuda")\n')
    if home == None:
        ctx.file("defs.bzl", "\n".join([
            "CUDA_AVAILABLE = False",
            'CUDA_HOME = ""',
            "def if_cuda(yes, no = []):",
            "    return no",
            "",
        ]))
        ctx.file("BUILD.bazel", "\n".join([
            'package(default_visibility = ["//visibility:public"])',
            'cc_library(name = "cuda_headers", target_compatible_with = ["@platforms//:incompatible"])',
            'cc_library(name = "cudart", target_compatible_with = ["@platforms//:incompatible"])',
            'cc_library(name = "nccl", target_compatible_with = ["@platforms//:incompatible"])',
            'cc_library(name = "cublaslt", target_compatible_with = ["@platforms//:incompatible"])',
            'exports_files(["defs.bzl"])',
            "",
        ]))
        return

    ctx.symlink(home + "/include", "include")
    ctx.symlink(home + "/bin/nvcc", "nvcc")
    libdirs = {}
    for lib in ["libcudart_static.a", "libnccl.so", "libcublasLt.so", "libcublas.so"]:
        for d in ["/lib64/", "/lib/", "/targets/x86_64-linux/lib/"]:
            if ctx.path(home + d + lib).exists:
                ctx.symlink(home + d + lib, "lib/" + lib)
                libdirs[lib] = str(ctx.path(home + d + lib).realpath.dirname)
                break
    nccl_dir = libdirs.get("libnccl.so", home + "/lib64")
    cublas_dir = libdirs.get("libcublasLt.so", home + "/lib64")
    ctx.file("defs.bzl", "\n".join([
        "CUDA_AVAILABLE = True",
        'CUDA_HOME = "{}"'.format(home),
        "def if_cuda(yes, no = []):",
        "    return yes",
        "",
    ]))
    ctx.file("BUILD.bazel", "\n".join([
        'package(default_visibility = ["//visibility:public"])',
        'exports_files(["defs.bzl", "nvcc"])',
        "cc_library(",
        '    name = "cuda_headers",',
        '    hdrs = glob(["include/*.h", "include/crt/**", "include/cuda/**", "include/nv/**"]),',
        '    includes = ["include"],',
        ")",
        "cc_library(",
        '    name = "cudart",',
        '    srcs = ["lib/libcudart_static.a"],',
        '    linkopts = ["-ldl", "-lpthread", "-lrt"],',
        '    deps = [":cuda_headers"],',
        ")",
        "cc_library(",
        '    name = "nccl",',
        '    srcs = glob(["lib/libnccl.so"]),',
        '    linkopts = ["-Wl,-rpath,{}"],'.format(nccl_dir),
        '    deps = [":cuda_headers"],',
        ")",
        "cc_library(",
        '    name = "cublaslt",',
        '    srcs = glob(["lib/libcublasLt.so"]),',
        '    linkopts = ["-Wl,-rpath,{}"],'.format(cublas_dir),
        '    deps = [":cuda_headers"],',
        ")",
        "",
    ]))

local_cuda = repository_rule(
    implementation = _local_cuda_impl,
    local = True,
    environ = ["WSYNC_CUDA", "CUDA_HOME"],
)
