"""
What every grader shares: which file to grade, how many points each test is worth,
and the score at the end.

    python -m pytest -q assignments/a1_trig_param/grader.py                  # grades a1's student.py
    SUBMISSION=path/to/work.py python -m pytest -q assignments/a1_trig_param/grader.py
    python -m pytest -q assignments/a1_trig_param/grader.py --submission path/to/work.py

The file to grade is, in this order: --submission, the SUBMISSION environment
variable, or student.py next to the grader. It is imported under a fresh module
name, so any file name works. Each test function carries @pytest.mark.points(n)
(1 if absent), earned when the test passes (all of its parametrizations); the
score is the sum. --grade-report PATH writes the outcome of every test and the
score as JSON (grade.py reads it).
"""

import importlib.util
import itertools
import json
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent          # the repository: soflow.py, toy2d.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_counter = itertools.count()


def pytest_addoption(parser):
    group = parser.getgroup("grading")
    group.addoption("--submission", default=None,
                    help="the .py file to grade (default: $SUBMISSION, else student.py next to the grader)")
    group.addoption("--grade-report", default=None, help="write every test's outcome and the score to this JSON file")


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): what the test is worth in the grade (default 1)")
    # points: test function -> its points; nodes: test item -> outcome; outcomes:
    # test function -> outcome (passed only if every parametrization passed)
    config._grading = {"points": {}, "nodes": {}, "outcomes": {}, "dirs": set()}


def submission_path(config, grader_dir):
    path = config.getoption("--submission") or os.environ.get("SUBMISSION") or str(Path(grader_dir) / "student.py")
    return Path(path).expanduser().resolve()


def load_submission(path):
    """Import a .py file under a module name of its own."""
    if not path.is_file():
        raise FileNotFoundError(f"submission {path} does not exist")
    name = f"submission_{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # as a normal import would (dataclasses, pickling need it)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sub(request):
    """The submission under test, imported once per grader."""
    path = submission_path(request.config, request.path.parent)
    try:
        return load_submission(path)
    except Exception:
        error = traceback.format_exc(limit=-3)
    request.config._grading["import_error"] = error
    pytest.fail(f"could not import the submission {path}:\n{error}", pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One CPU thread: the tiny networks of the graders run faster so, and the
    numbers do not depend on the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def prerequisites(request):
    """prerequisites('test_a', ...) fails the calling test at once if one of those
    tests of the same grader failed: a slow behaviour test (a training run) is only
    worth running once the pieces it is built from are right. (Tests that did not
    run, e.g. deselected with -k, do not block.)"""
    outcomes = request.config._grading["outcomes"]

    def check(*names):
        base = request.node.nodeid.split("::")[0]
        failed = [n for n in names if outcomes.get(f"{base}::{n}") == "failed"]
        if failed:
            pytest.fail(f"not graded until these tests pass: {', '.join(failed)}", pytrace=False)
    return check


def pytest_collection_modifyitems(config, items):
    for item in items:
        mark = item.get_closest_marker("points")
        config._grading["points"][_function_id(item.nodeid)] = float(mark.args[0]) if mark else 1.0
        config._grading["dirs"].add(item.path.parent)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    state = item.config._grading
    nodes = state["nodes"]
    if report.failed or report.skipped:                 # a skipped test earns nothing either
        nodes[item.nodeid] = "failed"
    elif report.when == "call" and nodes.get(item.nodeid) != "failed":
        nodes[item.nodeid] = "passed"
    function = _function_id(item.nodeid)
    mine = [o for n, o in nodes.items() if _function_id(n) == function]
    state["outcomes"][function] = "passed" if all(o == "passed" for o in mine) else "failed"
    return report


def _function_id(nodeid):
    """'dir/grader.py::test_x[a-b]' -> 'dir/grader.py::test_x'."""
    return nodeid.split("[")[0]


def _score(config):
    state = config._grading
    outcomes = state["outcomes"]
    total = sum(state["points"].values())
    earned = sum(p for f, p in state["points"].items() if outcomes.get(f) == "passed")
    return earned, total, outcomes


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config._grading["points"]:
        return
    earned, total, _ = _score(config)
    where = ", ".join(str(submission_path(config, d)) for d in sorted(config._grading["dirs"]))
    terminalreporter.write_sep("=", f"grade: {earned:g} / {total:g} points  ({where})")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    path = config.getoption("--grade-report")
    if not path or not hasattr(config, "_grading"):
        return
    earned, total, outcomes = _score(config)
    tests = {f.split("::")[-1]: {"points": p, "outcome": outcomes.get(f, "failed")}
             for f, p in config._grading["points"].items()}
    with open(path, "w") as f:
        json.dump({"earned": earned, "total": total, "exitstatus": int(exitstatus), "tests": tests,
                   "import_error": config._grading.get("import_error")}, f, indent=2)
