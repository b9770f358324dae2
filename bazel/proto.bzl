"""Protocol buffer and gRPC code generation with Debian's protoc.

`cc_grpc_library` runs protoc with grpc_cpp_plugin over .proto files of the
calling package and wraps the generated code in a cc_library. Imports are
resolved relative to the package directory, so a file at
proto/wsync/v1/wsync.proto is imported as "wsync/v1/wsync.proto" and its
headers are included as "wsync/v1/wsync.pb.h".

`py_grpc_sources` generates the Python modules (*_pb2.py, *_pb2_grpc.py) for
the Python client package.
"""

def _strip(src):
    if not src.endswith(".proto"):
        fail("expected a .proto file, got " + src)
    return src[:-len(".proto")]

def cc_grpc_library(name, srcs, grpc_srcs = None, deps = [], visibility = None):
    """Generated C++ messages for all `srcs`, and gRPC stubs for `grpc_srcs`.

    Args:
      name: the cc_library's name.
      srcs: .proto files in this package (paths relative to it).
      grpc_srcs: the subset of srcs that define services (default: all).
      deps: other cc_grpc_library targets whose protos these import.
      visibility: as for cc_library.
    """
    if grpc_srcs == None:
        grpc_srcs = srcs
    pkg = native.package_name()
    outs_pb = []
    outs_grpc = []
    for s in srcs:
        outs_pb += [_strip(s) + ".pb.h", _strip(s) + ".pb.cc"]
    for s in grpc_srcs:
        outs_grpc += [_strip(s) + ".grpc.pb.h", _strip(s) + ".grpc.pb.cc"]
    out_dir = "$(GENDIR)/" + pkg
    native.genrule(
        name = name + "_protoc",
        srcs = srcs,
        outs = outs_pb + outs_grpc,
        tools = ["@system//:bin/protoc", "@system//:bin/grpc_cpp_plugin"],
        cmd = " && ".join([
            "$(location @system//:bin/protoc) --proto_path={pkg} --cpp_out={out} {all}".format(
                pkg = pkg,
                out = out_dir,
                all = " ".join(["{}/{}".format(pkg, s) for s in srcs]),
            ),
        ] + ([
            "$(location @system//:bin/protoc) --proto_path={pkg} --plugin=protoc-gen-grpc=$(location @system//:bin/grpc_cpp_plugin) --grpc_out={out} {grpc}".format(
                pkg = pkg,
                out = out_dir,
                grpc = " ".join(["{}/{}".format(pkg, s) for s in grpc_srcs]),
            ),
        ] if grpc_srcs else [])),
        message = "protoc " + name,
    )
    native.cc_library(
        name = name,
        srcs = [f for f in outs_pb + outs_grpc if f.endswith(".cc")],
        hdrs = [f for f in outs_pb + outs_grpc if f.endswith(".h")],
        includes = ["."],
        copts = ["-Wno-unused-parameter"],
        deps = deps + ["@system//:grpc++", "@system//:protobuf"],
        visibility = visibility,
    )

def py_grpc_sources(name, srcs, grpc_srcs = None, visibility = None):
    """Generated Python modules for `srcs` (a filegroup of .py files).

    Args:
      name: the filegroup's name.
      srcs: .proto files in this package.
      grpc_srcs: the subset that define services (default: all).
      visibility: as for filegroup.
    """
    if grpc_srcs == None:
        grpc_srcs = srcs
    pkg = native.package_name()
    outs = [_strip(s) + "_pb2.py" for s in srcs] + [_strip(s) + "_pb2_grpc.py" for s in grpc_srcs]
    out_dir = "$(GENDIR)/" + pkg
    native.genrule(
        name = name + "_protoc",
        srcs = srcs,
        outs = outs,
        tools = ["@system//:bin/protoc", "@system//:bin/grpc_python_plugin"],
        cmd = "$(location @system//:bin/protoc) --proto_path={pkg} --python_out={out} --plugin=protoc-gen-grpc_python=$(location @system//:bin/grpc_python_plugin) --grpc_python_out={out} {all}".format(
            pkg = pkg,
            out = out_dir,
            all = " ".join(["{}/{}".format(pkg, s) for s in srcs]),
        ),
        message = "protoc (python) " + name,
    )
    native.filegroup(name = name, srcs = outs, visibility = visibility)
