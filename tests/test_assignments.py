"""Tests of the classroom assignments (assignments/): every autograder gives the
reference solution full marks, every starter file imports and scores nothing
(NotImplementedError), every deliberately wrong solution fails exactly the tests
that its CAUGHT_BY names, and grade.py grades a class folder through the command
line a student uses. The graders run in-process (pytest's pytester), as
`pytest assignments/<a>/grader.py --submission <file>`."""

import ast
import csv
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import soflow  # noqa: F401  (imported once here, so the in-process graders share it)
import toy2d   # noqa: F401

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module", autouse=True)
def _import_once():
    """pytester drops the modules that an in-process run imported when it ends. The
    graders' first optimizer step imports torch._dynamo (hundreds of modules), and a3
    and a4 draw with matplotlib: import them here once, not once per grader run."""
    p = torch.nn.Parameter(torch.zeros(1))
    p.sum().backward()
    torch.optim.Adam([p]).step()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import scipy.integrate    # noqa: F401


ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = sorted(p.parent for p in (ROOT / "assignments").glob("*/grader.py"))
WRONG = sorted(p for a in ASSIGNMENTS for p in a.glob("wrong_*.py"))


def ids(paths):
    return [f"{p.parent.name}/{p.name}" if p.suffix else p.name for p in paths]


@pytest.fixture
def pytester(pytester, monkeypatch):
    """In-process pytest runs without third-party plugins: pytester discards the modules a
    run imports, and a plugin such as hypothesis's would be imported again every run."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester


def grade(pytester, submission):
    """Run the submission's assignment grader in-process; (exit code, report, failure text)."""
    report = pytester.path / "report.json"
    grader = submission.parent / "grader.py"
    rec = pytester.inline_run(str(grader), "--submission", str(submission), "--grade-report", str(report),
                              "-p", "no:cacheprovider", "-q")
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
        for name in ("README.md", "student.py", "solution.py", "grader.py"):
            assert (a / name).is_file(), f"{a.name}/{name} is missing"
        assert list(a.glob("wrong_*.py")), f"{a.name} has no deliberately wrong solution"
        text = (a / "README.md").read_text()
        for section in ("## Context", "## What to implement", "## Check yourself", "## How it is graded",
                        "**Estimated time:**"):
            assert section in text, f"{a.name}/README.md lacks '{section}'"
        student = (a / "student.py").read_text()
        assert "TODO(student)" in student and "raise NotImplementedError" in student
    index = (ROOT / "assignments" / "README.md").read_text()
    for a in ASSIGNMENTS:
        assert a.name in index, f"assignments/README.md does not list {a.name}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=ids(ASSIGNMENTS))
def test_reference_solution_gets_full_marks(pytester, assignment):
    ret, report, failures = grade(pytester, assignment / "solution.py")
    assert ret == 0 and not failed_tests(report), failures
    assert report["earned"] == report["total"] > 0
    # the README's grading table lists every test with the grader's points
    readme = (assignment / "README.md").read_text()
    table = {name: float(points) for name, points in re.findall(r"^\| `(test_\w+)` \| (\d+) \|", readme, re.M)}
    assert table == {name: r["points"] for name, r in report["tests"].items()}
    assert f"{report['total']:g} points" in readme


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=ids(ASSIGNMENTS))
def test_starter_imports_and_earns_nothing(pytester, assignment):
    student = load(assignment / "student.py")                  # imports without error
    solution = load(assignment / "solution.py")
    missing = public_functions(solution) - public_functions(student)
    assert not missing, f"the starter lacks {sorted(missing)}"
    ret, report, failures = grade(pytester, assignment / "student.py")
    assert ret == 1 and report["earned"] == 0, f"the starter earns {report['earned']} points"
    assert failed_tests(report) == set(report["tests"])
    assert "NotImplementedError" in failures


@pytest.mark.parametrize("wrong", WRONG, ids=ids(WRONG))
def test_wrong_solution_fails_the_tests_it_names(pytester, wrong):
    expected = caught_by(wrong)
    ret, report, failures = grade(pytester, wrong)
    assert ret == 1, "the grader passes a wrong solution"
    assert expected <= set(report["tests"]), f"CAUGHT_BY names unknown tests: {expected - set(report['tests'])}"
    assert failed_tests(report) == expected, failures
    assert 0 <= report["earned"] < report["total"]
    assert "NotImplementedError" not in failures


def test_grade_py_grades_a_class_folder(tmp_path, monkeypatch):
    """The teacher's command on a class folder holding a wrong file and a sub-folder with a
    correct student.py; grade.py grades each in a subprocess of its own, with the
    command a student uses (SUBMISSION=... python -m pytest -q <grader>), two at a time."""
    a1 = ROOT / "assignments" / "a1_trig_param"
    folder = tmp_path / "class"
    (folder / "carol").mkdir(parents=True)
    shutil.copy(a1 / "wrong_sign.py", folder / "bob.py")
    shutil.copy(a1 / "solution.py", folder / "carol" / "student.py")
    (folder / "notes.txt").write_text("not a submission")
    out = tmp_path / "grades"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    grade = load(ROOT / "assignments" / "grade.py")
    grade.main(["a1_trig_param", str(folder), "--out", str(out), "--jobs", "2", "--timeout", "300"])
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    assert set(rows) == {"bob", "carol"}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["carol"]["points"] == rows["carol"]["total"] == "13" and rows["carol"]["failed_tests"] == ""
    assert set(rows["bob"]["failed_tests"].split()) == caught_by(a1 / "wrong_sign.py")
    assert 0 < float(rows["bob"]["points"]) < 13
    assert "AssertionError" in (out / "bob.txt").read_text()
    with pytest.raises(SystemExit):
        grade.main(["a9_no_such_assignment", str(folder)])
