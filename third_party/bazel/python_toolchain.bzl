"""A Python 3 toolchain for the `python3` first on PATH.

Bazel 4.2.3 offline cannot download an interpreter, so this repository rule
asks the `python3` on PATH for `sys.executable` and writes a `py_runtime`
pointing at it. Tests then import whatever is installed in that Python
(TensorFlow included): activate a virtual environment before `bazel test`.
Bazel does not track that environment's site-packages.
"""

def _local_python_impl(rctx):
    python3 = rctx.which("python3")
    if not python3:
        fail("no python3 on PATH")
    result = rctx.execute([python3, "-c", "import sys; print(sys.executable)"])
    if result.return_code != 0:
        fail("%s failed: %s" % (python3, result.stderr))
    interpreter = result.stdout.strip()
    rctx.file("BUILD", """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "python3",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    stub_shebang = "#!{interpreter}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":python3",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(interpreter = interpreter))

local_python = repository_rule(
    implementation = _local_python_impl,
    # Re-run when PATH changes, e.g. when another virtual environment is
    # active.
    environ = ["PATH"],
    local = True,
)
