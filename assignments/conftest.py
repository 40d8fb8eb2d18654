"""
What every grader shares: which file to grade, the submission's process, the points,
the score and the feedback.

    python -m pytest -q assignments/a1_trig_param/grader.py                  # grades a1's student.py
    SUBMISSION=path/to/work.py python -m pytest -q assignments/a1_trig_param/grader.py
    python -m pytest -q assignments/a1_trig_param/grader.py --submission path/to/work.py

The file to grade is, in this order: --submission, the SUBMISSION environment
variable, or student.py next to the grader. It never runs in this process: the
fixture `sub` is a runner.Submission, a test asks it for values with
sub.run(compute, ...) and checks them here (runner.py says why that makes the grade
impossible to forge from the submission). Each test function carries
@pytest.mark.points(n) (1 if absent), earned when the test passes (all of its
parametrizations). Every failure is reported as one short reason, once per test
function; the status says whether the file imported, has the grader's FUNCTIONS, or
timed out or crashed. --grade_report PATH writes all of it as JSON (grade.py reads it).
"""

import ast
import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent                                     # the repository: soflow.py, toy2d.py
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import runner  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("grading")
    group.addoption("--submission", default=None,
                    help="the .py file to grade (default: $SUBMISSION, else student.py next to the grader)")
    group.addoption("--grade_report", default=None, help="write the outcome of every test and the score to this JSON file")
    group.addoption("--call_timeout", type=float, default=60.0,
                    help="seconds the submission may take for one request of a test (and for its import)")


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): what the test is worth in the grade (default 1)")
    # points: test function -> points; nodes: test item -> outcome; outcomes: test function ->
    # outcome (passed only if every parametrization passed); reasons: test function -> [(case, reason)]
    config._grading = {"points": {}, "nodes": {}, "outcomes": {}, "reasons": {}, "submissions": []}
    runner.context()                 # the server that forks the submissions' processes loads torch meanwhile


def submission_path(config, grader_dir):
    path = config.getoption("--submission") or os.environ.get("SUBMISSION") or str(Path(grader_dir) / "student.py")
    return Path(path).expanduser().resolve()


@pytest.fixture(scope="module")
def sub(request):
    """The submission under test, in a process of its own (runner.Submission)."""
    s = runner.Submission(request.path, submission_path(request.config, request.path.parent),
                          request.config.getoption("--call_timeout"))
    s.assignment, s.functions = request.path.parent.name, tuple(request.module.FUNCTIONS)
    request.config._grading["submissions"].append(s)
    yield s
    s.stop()


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


def _function_id(nodeid):
    """'dir/grader.py::test_x[a-b]' -> 'dir/grader.py::test_x'."""
    return nodeid.split("[")[0]


def _reason(excinfo, path):
    """One short text per failure: the submission's problem as runner says it, or the
    failed check's message and its line in the grader (no traceback)."""
    e = excinfo.value
    if isinstance(e, (runner.Problem, pytest.fail.Exception)):
        return str(e)
    lines = [l for l in excinfo.traceback if Path(str(l.path)) == path]
    where = f"\n  (grader.py, line {lines[-1].lineno + 1})" if lines else ""
    return f"{type(e).__name__}: {e}".strip() + where


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    state = item.config._grading
    nodes, function = state["nodes"], _function_id(item.nodeid)
    if report.failed or report.skipped:                 # a skipped test earns nothing either
        nodes[item.nodeid] = "failed"
    elif report.when == "call" and nodes.get(item.nodeid) != "failed":
        nodes[item.nodeid] = "passed"
    mine = [o for n, o in nodes.items() if _function_id(n) == function]
    state["outcomes"][function] = "passed" if all(o == "passed" for o in mine) else "failed"
    if report.failed and call.excinfo is not None:
        reason = _reason(call.excinfo, item.path)
        case = item.nodeid[len(function):]
        seen = state["reasons"].setdefault(function, [])
        same = next((c for c, r in seen if r == reason), None)
        seen.append((case, reason))
        report.longrepr = reason if same is None else f"the same failure as {same or 'above'}"
    return report

# ---------------------------------------------------------------- score, status, report

def assignment_functions():
    """{assignment: its grader's FUNCTIONS}, read without importing the graders."""
    found = {}
    for grader in sorted(HERE.glob("*/grader.py")):
        for node in ast.parse(grader.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FUNCTIONS" for t in node.targets):
                found[grader.parent.name] = tuple(ast.literal_eval(node.value))
    return found


def status(config):
    """(status, detail): 'ok', 'could not import', 'wrong assignment', 'missing functions',
    'timed out' or 'crashed'; the first that applies, the detail says what and where."""
    subs = config._grading["submissions"]
    for s in subs:
        if s.import_error:
            return "could not import", s.import_error
    for s in subs:
        if s.names is None:
            continue
        missing = [f for f in s.functions if f not in s.names]
        mine = 1 - len(missing) / len(s.functions)                # the share of this grader's functions present
        for other, functions in assignment_functions().items():
            have = [f for f in functions if f in s.names]
            if other != s.assignment and mine <= 0.5 and len(have) / len(functions) > max(mine, 0.5):
                return "wrong assignment", (f"this file has the functions of {other} ({', '.join(have)}), "
                                            f"not those of {s.assignment} (it lacks {', '.join(missing)})")
        if missing:
            return "missing functions", ", ".join(missing)
    for kind, name in (("timeout", "timed out"), ("crash", "crashed")):
        found = [f"{doing}: {message.splitlines()[0]}" for s in subs for k, doing, message in s.problems if k == kind]
        if found:
            return name, "; ".join(found)
    return "ok", ""


def _score(config):
    state = config._grading
    outcomes = state["outcomes"]
    total = sum(state["points"].values())
    earned = sum(p for f, p in state["points"].items() if outcomes.get(f) == "passed")
    return earned, total, outcomes


def tests_report(config):
    state = config._grading
    _, _, outcomes = _score(config)
    report = {}
    for f, p in state["points"].items():
        failures = state["reasons"].get(f, [])
        report[f.split("::")[-1]] = {"points": p, "outcome": outcomes.get(f, "failed"),
                                     "reason": failures[0][1] if failures else None,
                                     "failed_cases": [c for c, _ in failures],
                                     "cases": sum(_function_id(n) == f for n in state["nodes"])}
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config._grading["points"]:
        return
    earned, total, _ = _score(config)
    where = ", ".join(str(s.path) for s in config._grading["submissions"])
    terminalreporter.write_sep("=", f"grade: {earned:g} / {total:g} points  ({where})")
    state, detail = status(config)
    terminalreporter.write_line(f"status: {state}" + (f" ({detail.splitlines()[0]})" if detail else ""))
    for name, r in tests_report(config).items():
        got = r["points"] if r["outcome"] == "passed" else 0
        line = f"  {got:g}/{r['points']:g}  {name}"
        if r["reason"]:
            line += f": {r['reason'].splitlines()[0][:150]}"
        terminalreporter.write_line(line)


def write_report(config, state, detail, output="", exitstatus=None):
    path = config.getoption("--grade_report")
    if path:
        earned, total, _ = _score(config)
        with open(path, "w") as f:
            json.dump({"earned": earned, "total": total, "exitstatus": exitstatus, "status": state, "detail": detail,
                       "tests": tests_report(config), "output": output,
                       "submission": ", ".join(str(s.path) for s in config._grading["submissions"])}, f, indent=2)


def pytest_collection_finish(session):
    """A first report, before any test runs: what grade.py shows if the whole run times out."""
    write_report(session.config, "running", "")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not hasattr(config, "_grading"):
        return
    subs = config._grading["submissions"]
    write_report(config, *status(config), "\n".join(s.output() for s in subs).strip("\n"), int(exitstatus))
    for s in subs:
        s.close()
