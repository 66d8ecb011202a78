"""pytest_test: a py_test that runs its test file with pytest."""

load("@rules_python//python:defs.bzl", "py_test")

def pytest_test(name, srcs, data = [], **kwargs):
    """A py_test whose main runs pytest on `srcs` (pytest-style test files).

    Args:
      name: the target's name.
      srcs: the test files; pytest runs each of them.
      data: runfiles besides pytest.ini, which is always there so that
        pytest reads the same configuration as from the repo root.
      **kwargs: passed to py_test (deps, size, ...).
    """
    py_test(
        name = name,
        srcs = srcs + ["//tools:pytest_main.py"],
        main = "//tools:pytest_main.py",
        args = ["$(rootpath %s)" % src for src in srcs],
        data = data + ["//:pytest.ini"],
        **kwargs
    )
