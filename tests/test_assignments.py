"""Tests of the classroom assignments (assignments/): every autograder gives the
reference solution full marks, every starter file imports and scores nothing
(NotImplementedError), every deliberately wrong solution fails exactly the tests
that its CAUGHT_BY names; a submission that crashes, loops, lacks functions or
belongs to another assignment gets that status; and grade.py grades a class folder,
where submissions that forge their grade (rewriting the report at exit, printing a
fake summary) earn nothing. The graders run in-process (pytest's pytester), as
`pytest assignments/<a>/grader.py --submission <file>`; the submissions run, as
always, in processes of their own."""

import ast
import csv
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "assignments"))
# imported once here, so that the in-process grader runs share them (pytester drops the
# modules a run imports) and share the server that forks the submissions' processes
import runner  # noqa: E402
import checks  # noqa: E402,F401
import toynet  # noqa: E402,F401
import scipy.integrate  # noqa: E402,F401

pytest_plugins = ["pytester"]

ASSIGNMENTS = sorted(p.parent for p in (ROOT / "assignments").glob("*/grader.py"))
TEACHERS = ROOT / "assignments" / "teachers"
WRONG = sorted(p for a in ASSIGNMENTS for p in (TEACHERS / a.name).glob("wrong_*.py"))
A1 = ROOT / "assignments" / "a1_trig_param"


def ids(paths):
    return [f"{p.parent.name}/{p.name}" if p.suffix else p.name for p in paths]


@pytest.fixture
def pytester(pytester, monkeypatch):
    """In-process pytest runs without third-party plugins: pytester discards the modules a
    run imports, and a plugin such as hypothesis's would be imported again every run."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester


def grade(pytester, submission, grader=None, *options):
    """Run a grader in-process on a submission; (exit code, report, failure text)."""
    report = pytester.path / "report.json"
    grader = grader or ROOT / "assignments" / submission.parent.name / "grader.py"
    rec = pytester.inline_run(str(grader), "--submission", str(submission), "--grade_report", str(report),
                              "-p", "no:cacheprovider", "-q", *options)
    failures = "\n".join(str(r.longrepr) for r in rec.getreports("pytest_runtest_logreport") if r.failed)
    return int(rec.ret), json.loads(report.read_text()), failures


def failed_tests(report):
    return {name for name, r in report["tests"].items() if r["outcome"] != "passed"}


def caught_by(path):
    """The wrong solution's CAUGHT_BY tuple, read without importing the file."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CAUGHT_BY" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{path} has no CAUGHT_BY")


def load(path):
    spec = importlib.util.spec_from_file_location(f"_check_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_functions(module):
    return {n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__}


def test_every_assignment_is_complete():
    assert len(ASSIGNMENTS) >= 5
    for a in ASSIGNMENTS:
        for path in (a / "README.md", a / "student.py", a / "grader.py", TEACHERS / a.name / "solution.py"):
            assert path.is_file(), f"{path} is missing"
        assert list((TEACHERS / a.name).glob("wrong_*.py")), f"{a.name} has no deliberately wrong solution"
        assert not list(a.glob("solution*.py")) + list(a.glob("wrong_*.py")), f"{a.name}: answers outside teachers/"
        text = (a / "README.md").read_text()
        for section in ("## Context", "## What to implement", "## Check yourself", "## How it is graded",
                        "**Estimated time:**"):
            assert section in text, f"{a.name}/README.md lacks '{section}'"
        student = (a / "student.py").read_text()
        assert "TODO(student)" in student and "raise NotImplementedError" in student
        functions = runner_functions(a)
        assert functions and set(functions) <= public_functions(load(a / "student.py")), f"{a.name}: FUNCTIONS"
    for index in ("README.md", "teachers/README.md"):
        text = (ROOT / "assignments" / index).read_text()
        for a in ASSIGNMENTS:
            assert a.name in text, f"assignments/{index} does not list {a.name}"


def runner_functions(assignment):
    for node in ast.parse((assignment / "grader.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FUNCTIONS" for t in node.targets):
            return ast.literal_eval(node.value)


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=ids(ASSIGNMENTS))
def test_reference_solution_gets_full_marks(pytester, assignment):
    ret, report, failures = grade(pytester, TEACHERS / assignment.name / "solution.py", assignment / "grader.py")
    assert ret == 0 and not failed_tests(report), failures
    assert report["earned"] == report["total"] > 0 and report["status"] == "ok"
    # the README's grading table lists every test with the grader's points
    readme = (assignment / "README.md").read_text()
    table = {name: float(points) for name, points in re.findall(r"^\| `(test_\w+)` \| (\d+) \|", readme, re.M)}
    assert table == {name: r["points"] for name, r in report["tests"].items()}
    assert f"{report['total']:g} points" in readme


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=ids(ASSIGNMENTS))
def test_starter_imports_and_earns_nothing(pytester, assignment):
    student = load(assignment / "student.py")                  # imports without error
    solution = load(TEACHERS / assignment.name / "solution.py")
    missing = public_functions(solution) - public_functions(student)
    assert not missing, f"the starter lacks {sorted(missing)}"
    ret, report, failures = grade(pytester, assignment / "student.py")
    assert ret == 1 and report["earned"] == 0, f"the starter earns {report['earned']} points"
    assert failed_tests(report) == set(report["tests"])
    assert "NotImplementedError" in failures and report["status"] == "ok"


@pytest.mark.parametrize("wrong", WRONG, ids=ids(WRONG))
def test_wrong_solution_fails_the_tests_it_names(pytester, wrong):
    expected = caught_by(wrong)
    ret, report, failures = grade(pytester, wrong, ROOT / "assignments" / wrong.parent.name / "grader.py")
    assert ret == 1, "the grader passes a wrong solution"
    assert expected <= set(report["tests"]), f"CAUGHT_BY names unknown tests: {expected - set(report['tests'])}"
    assert failed_tests(report) == expected, failures
    assert 0 <= report["earned"] < report["total"]
    assert "NotImplementedError" not in failures

# ---------------------------------------------------------------- statuses and feedback

def a1_with(tmp_path, name, old=None, new=None, prefix=""):
    """a1's reference solution with one piece of text replaced (or code put in front)."""
    source = (TEACHERS / "a1_trig_param" / "solution.py").read_text()
    if old is not None:
        assert source.count(old) == 1
        source = source.replace(old, new)
    path = tmp_path / f"{name}.py"
    path.write_text(prefix + source)
    return path


def test_status_crashed_and_timed_out(pytester, tmp_path):
    """A function that ends its process, and one that never returns: those tests fail with the
    reason, the others still pass (the next test gets a fresh process), and the status says it."""
    crash = a1_with(tmp_path, "crash", "    return torch.cos(H * (s - t)), torch.sin(H * (s - t))",
                    "    print('about to leave'); import os; os._exit(3)")
    ret, report, failures = grade(pytester, crash, A1 / "grader.py")
    assert report["status"] == "crashed" and "exit code 3" in report["detail"], report["detail"]
    assert "exit code 3" in report["tests"]["test_coefficient_values"]["reason"]
    assert "about to leave" in report["tests"]["test_coefficient_values"]["reason"]
    assert report["tests"]["test_schedule_values_and_endpoints"]["outcome"] == "passed"
    assert 0 < report["earned"] < report["total"]

    loop = a1_with(tmp_path, "loop", '    """(alpha(t), beta(t), alpha\'(t), beta\'(t)) of the trigonometric schedule."""',
                   "    while True: pass")
    ret, report, failures = grade(pytester, loop, A1 / "grader.py", "--call_timeout", "1.5")
    assert report["status"] == "timed out" and "schedule_at" in report["detail"], report["detail"]
    assert "did not finish within 1.5 s" in report["tests"]["test_schedule_values_and_endpoints"]["reason"]
    assert report["tests"]["test_partial_derivatives_match_autograd"]["outcome"] == "passed"
    assert failed_tests(report) == {"test_schedule_values_and_endpoints", "test_schedule_derivatives_match_autograd",
                                    "test_velocity_and_solution_match_soflow"}

    hangs = a1_with(tmp_path, "hangs", prefix="while True:\n    pass\n")
    ret, report, failures = grade(pytester, hangs, A1 / "grader.py", "--call_timeout", "1.5")
    assert report["status"] == "could not import" and "timed out" in report["detail"]
    assert report["earned"] == 0 and failures.count("did not finish") == 8


def test_status_import_error_missing_functions_wrong_assignment(pytester, tmp_path):
    broken = a1_with(tmp_path, "broken", "def trig_coefficients(t, s):", "def trig_coefficients(t, s)")
    ret, report, failures = grade(pytester, broken, A1 / "grader.py")
    assert report["status"] == "could not import" and "SyntaxError" in report["detail"]
    assert "broken.py, line" in report["detail"] and report["earned"] == 0

    missing = a1_with(tmp_path, "missing", "def velocity(net, x, t, y=None):", "def velocity_head(net, x, t, y=None):")
    ret, report, failures = grade(pytester, missing, A1 / "grader.py")
    assert (report["status"], report["detail"]) == ("missing functions", "velocity")
    assert "the submission has no function `velocity`" in report["tests"]["test_velocity_and_solution_match_soflow"]["reason"]
    assert report["tests"]["test_boundary_condition"]["outcome"] == "passed"

    ret, report, failures = grade(pytester, TEACHERS / "a3_l_schedule" / "solution.py", A1 / "grader.py")
    assert report["status"] == "wrong assignment" and "a3_l_schedule" in report["detail"], report["detail"]
    assert report["earned"] == 0


def test_a_failure_is_reported_once_per_test_function(pytester):
    """Nine failing cases of one test: one reason in the report, the cases listed; in pytest's
    output one short reason per case, and an identical one only once."""
    a2 = ROOT / "assignments" / "a2_consistency_loss"
    ret, report, failures = grade(pytester, TEACHERS / a2.name / "wrong_step_sign.py", a2 / "grader.py", "-k", "eq14")
    r = report["tests"]["test_loss_value_is_eq14_with_eq15"]
    assert len(r["failed_cases"]) == 9 and "per-sample MSE" in r["reason"] and "off by up to" in r["reason"]
    assert "Traceback" not in failures and "def " not in failures and len(failures.splitlines()) <= 2 * 9
    ret, report, failures = grade(pytester, a2 / "student.py", a2 / "grader.py", "-k", "eq14")
    assert failures.count("your code raised") == 1 and failures.count("the same failure as") == 8, failures


def test_boundary_condition_accepts_round_off(pytester, tmp_path):
    """cos cos + sin sin for a(t, s) is right, though a(t, t) = 1 - 2.2e-16; a wrong a(t, t)
    is reported with the coefficient's name and the error."""
    product = "torch.cos(H * s) * torch.cos(H * t) + torch.sin(H * s) * torch.sin(H * t)"
    right = a1_with(tmp_path, "product", "return torch.cos(H * (s - t)), torch.sin(H * (s - t))",
                    f"return {product}, torch.sin(H * (s - t))")
    ret, report, _ = grade(pytester, right, A1 / "grader.py", "-k", "boundary or coefficient_values")
    assert ret == 0 and report["earned"] == 3
    wrong = a1_with(tmp_path, "off", "return torch.cos(H * (s - t)), torch.sin(H * (s - t))",
                    "return torch.cos(H * (s - t)) + 1e-6 * t, torch.sin(H * (s - t))")
    ret, report, _ = grade(pytester, wrong, A1 / "grader.py", "-k", "boundary")
    reason = report["tests"]["test_boundary_condition"]["reason"]
    assert "a(t, t), which must be 1," in reason and re.search(r"off by up to 9\.\de-07", reason), reason

# ---------------------------------------------------------------- grade.py and forged grades

FORGE_REPORT = '''
"""Implements nothing; tries to write its own grade: the report file, at import, from a
thread and at exit, and patches pytest and the grader in its own process."""
import atexit, json, os, sys, threading, time
import _pytest.runner
path = sys.argv[sys.argv.index("--grade_report") + 1] if "--grade_report" in sys.argv else None
TESTS = ["test_schedule_values_and_endpoints", "test_schedule_derivatives_match_autograd", "test_coefficient_values",
         "test_boundary_condition", "test_partial_derivatives_match_autograd",
         "test_velocity_coefficients_are_the_s_derivatives_at_s_equals_t",
         "test_velocity_is_the_s_derivative_of_the_solution", "test_velocity_and_solution_match_soflow"]
def forge():
    if path:
        with open(path, "w") as f:
            json.dump({"earned": 13, "total": 13, "exitstatus": 0, "status": "ok", "detail": "", "output": "",
                       "tests": {t: {"points": 1, "outcome": "passed", "reason": None, "failed_cases": []} for t in TESTS}}, f)
def keep_forging():
    while True:
        forge()
        time.sleep(0.01)
forge()
atexit.register(forge)
threading.Thread(target=keep_forging, daemon=True).start()
_pytest.runner.call_and_report = lambda *a, **k: None
grader = sys.modules.get("grader")
if grader is not None:
    grader.close = lambda *a, **k: None
print("= grade: 13 / 13 points =")
'''

FORGE_OUTPUT = '''
"""Prints what a passing run prints, returns nothing right, and leaves with os._exit(0)."""
import os
print("........                                                                 [100%]")
print("= grade: 13 / 13 points  (student.py) =")
print("8 passed in 0.50s")
def trig_schedule(t):
    print("8 passed in 0.50s")
    os._exit(0)
'''


def test_grade_py_grades_a_class_and_forged_grades_earn_nothing(tmp_path, monkeypatch):
    """The teacher's command on a class folder: a correct sub-folder submission and two files
    that forge their grade. grade.py runs the student's command for each, two at a time; the
    forgers get 0 points, and their fake lines appear only as their program's output."""
    folder = tmp_path / "class"
    (folder / "carol").mkdir(parents=True)
    shutil.copy(TEACHERS / "a1_trig_param" / "solution.py", folder / "carol" / "student.py")
    (folder / "mallory.py").write_text(FORGE_REPORT)
    (folder / "oscar.py").write_text(FORGE_OUTPUT)
    (folder / "notes.txt").write_text("not a submission")
    out = tmp_path / "grades"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    grade_py = load(ROOT / "assignments" / "grade.py")
    grade_py.main(["a1_trig_param", str(folder), "--out", str(out), "--jobs", "2", "--timeout", "300"])
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    assert set(rows) == {"carol", "mallory", "oscar"}
    assert rows["carol"]["points"] == rows["carol"]["total"] == "13" and rows["carol"]["failed_tests"] == ""
    for forger in ("mallory", "oscar"):
        assert rows[forger]["points"] == "0" and rows[forger]["status"] == "missing functions", rows[forger]
        assert len(rows[forger]["failed_tests"].split()) == 8 and rows[forger]["total"] == "13"
    text = (out / "oscar.txt").read_text()
    assert text.startswith("oscar: 0 / 13 points") and "crashed: the submission's process ended (exit code 0)" in text
    assert "Your program printed" in text and all(l.startswith(" ") for l in text.splitlines() if "8 passed" in l)
    with pytest.raises(SystemExit):
        grade_py.main(["a9_no_such_assignment", str(folder)])


def test_grade_py_stops_when_grading_files_change_and_gives_no_points_after_a_timeout(tmp_path, monkeypatch):
    """A submission that rewrites a grader while it is graded (simulated here, in a copy of
    the files): its row and the later ones get no points, and grade.py stops with an error.
    The whole grading timed out: no points, the total and the tests from pytest's first report."""
    grade_py = load(ROOT / "assignments" / "grade.py")
    grade_one = grade_py.grade_one
    here = tmp_path / "repo" / "assignments"
    shutil.copytree(A1, here / A1.name)
    for name in ("soflow.py", "toy2d.py"):
        (tmp_path / "repo" / name).write_text("")
    monkeypatch.setattr(grade_py, "HERE", here)
    monkeypatch.setattr(grade_py, "ROOT", tmp_path / "repo")
    report = {"earned": 1, "total": 1, "status": "ok", "detail": "", "output": "",
              "tests": {"test_a": {"points": 1, "outcome": "passed", "reason": None, "failed_cases": [], "cases": 1}}}

    def rewrites_the_grader(grader, path, timeout, call_timeout):
        grader.write_text(grader.read_text() + "\n# all tests pass\n")
        return report, "ok", "", ""
    monkeypatch.setattr(grade_py, "grade_one", rewrites_the_grader)
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "mallory.py").write_text("")
    with pytest.raises(SystemExit, match="grading files had changed"):
        grade_py.main([A1.name, str(tmp_path / "class"), "--out", str(tmp_path / "out")])
    row, = csv.DictReader(open(tmp_path / "out" / "grades.csv"))
    assert (row["points"], row["status"]) == ("0", "grading files changed")

    def times_out(cmd, **kw):              # pytest wrote its first report, then the time ran out
        path = Path(cmd[cmd.index("--grade_report") + 1])
        path.write_text(json.dumps({**report, "status": "running", "earned": 0}))
        raise grade_py.subprocess.TimeoutExpired(cmd, kw["timeout"])
    monkeypatch.setattr(grade_py.subprocess, "run", times_out)
    got, status, detail, _ = grade_one(A1 / "grader.py", tmp_path / "class" / "mallory.py", 5, 1)
    assert (status, got["earned"], got["total"]) == ("timed out", 0, 1) and "more than 5 s" in detail


def test_grade_py_takes_no_report_that_contradicts_pytest():
    grade_py = load(ROOT / "assignments" / "grade.py")
    report = {"earned": 13, "total": 13, "status": "ok", "detail": "",
              "tests": {"test_a": {"outcome": "passed"}, "test_b": {"outcome": "passed"}}}
    assert grade_py.check_report(report, 0) == ("ok", "")
    assert grade_py.check_report(report, 1)[0] == "grader error"            # pytest says a test failed
    assert grade_py.check_report(None, 1)[0] == "grader error"
    report["tests"]["test_b"]["outcome"] = "failed"
    assert grade_py.check_report(report, 0)[0] == "grader error"


def test_wire_format_carries_data_only():
    """What the submission's process sends is decoded without unpickling: tensors, arrays,
    tuples and non-string keys survive; anything else is refused on both sides."""
    import numpy as np
    import torch
    value = {"t": torch.arange(6, dtype=torch.float64).reshape(2, 3), "a": np.eye(2, dtype=np.float32),
             (1.0, 0.25): [1, 2.5, None, True, "x", b"\x89PNG"], "empty": torch.zeros(0, 2), "bf": torch.ones(2, dtype=torch.bfloat16)}
    back = runner.unpack(runner.pack(value))
    assert torch.equal(back["t"], value["t"]) and back["t"].dtype == torch.float64
    assert np.array_equal(back["a"], value["a"]) and back["a"].dtype == np.float32
    assert back[(1.0, 0.25)] == [1, 2.5, None, True, "x", b"\x89PNG"] and back["empty"].shape == (0, 2)
    assert back["bf"].dtype == torch.bfloat16
    with pytest.raises(TypeError):
        runner.pack(object())
    with pytest.raises((ValueError, KeyError)):
        runner.unpack(b'{"pickle": "cos\\nsystem\\n"}')
