"""
Grade a whole class: run one assignment's grader on every submission in a folder.

    python assignments/grade.py a1_trig_param submissions/a1/
    python assignments/grade.py a2_consistency_loss submissions/a2/ --jobs 2 --out grades/a2

A submission is either a .py file directly in the folder (the student is the file
name: alice.py) or a sub-folder holding student.py (the student is the folder
name: alice/student.py). Each is graded exactly as a student grades it,

    SUBMISSION=<file> python -m pytest -q assignments/<assignment>/grader.py

in a pytest process of its own, which runs the submission in a child process and
decides the points itself (runner.py). grade.py takes the points from that pytest
process's report, and only if the report agrees with pytest's exit code (every test
passed exactly when pytest exits with 0). It also checks that the grading files
(the assignments' folders, soflow.py, toy2d.py) are unchanged after each submission.

Writes, in --out (default out/grades/<assignment>): grades.csv (student, points, total,
percent, failed tests, status, detail) and <student>.txt, the feedback to hand back:
the grade, the status, one reason per failed test, and the last lines the program printed.
"""

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def find_submissions(folder):
    """{student: path} for folder/*.py and folder/*/student.py."""
    found = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix == ".py" and not p.name.startswith("_"):
            found[p.stem] = p
        elif p.is_dir() and (p / "student.py").is_file():
            found[p.name] = p / "student.py"
    return found


def grading_files_digest():
    """A digest of everything the graders read: a submission that rewrites them is noticed."""
    h = hashlib.sha256()
    for p in sorted([*HERE.rglob("*.py"), ROOT / "soflow.py", ROOT / "toy2d.py"]):
        if "__pycache__" not in p.parts:
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def check_report(report, returncode):
    """(status, detail) of one pytest run: the report's own, unless it disagrees with
    pytest's exit code (0: every test passed; 1: some failed) or is missing."""
    if report is None or report["status"] == "running":
        return "grader error", f"pytest wrote no final report (exit code {returncode})"
    all_passed = all(r["outcome"] == "passed" for r in report["tests"].values()) and report["tests"]
    if returncode not in (0, 1) or (returncode == 0) != bool(all_passed) or (all_passed and report["earned"] != report["total"]):
        return "grader error", f"the report does not match pytest's exit code {returncode}: no points given"
    return report["status"], report["detail"]


def grade_one(grader, path, timeout, call_timeout):
    """Run the grader on one file; returns (report or None, status, detail, pytest's output)."""
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(grader), "--submission", str(path),
               "--grade_report", str(report_path), "--call_timeout", str(call_timeout)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            # no points: the report was not finished (pytest wrote a first one with the tests and
            # their points before running any; only those are taken from it)
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            detail = f"the whole grading took more than {timeout:g} s and was stopped"
            report = json.loads(report_path.read_text()) if report_path.is_file() else None
            if report is None:
                return None, "timed out", detail, out
            tests = {t: {"points": r["points"], "outcome": "failed", "reason": detail, "failed_cases": [""],
                         "cases": 1} for t, r in report["tests"].items()}
            return {"earned": 0, "total": sum(r["points"] for r in tests.values()), "tests": tests, "output": ""}, \
                "timed out", detail, out
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        status, detail = check_report(report, proc.returncode)
        return (report if status != "grader error" else None), status, detail, proc.stdout + proc.stderr


def feedback(student, report, status, detail, output):
    """The text handed back: grade, status, one reason per failed test, the program's output."""
    if report is None:
        return f"{student}: no grade ({status}: {detail})\n\nThe grader's output:\n{output[-4000:]}"
    lines = [f"{student}: {report['earned']:g} / {report['total']:g} points", f"status: {status}"
             + (f" ({detail})" if detail else ""), ""]
    said = {}                                  # reason -> the test that gave it first
    for name, r in report["tests"].items():
        got = r["points"] if r["outcome"] == "passed" else 0
        lines.append(f"{got:g}/{r['points']:g}  {name}" + ("" if r["outcome"] == "passed" else "  FAILED"))
        if r["reason"]:
            cases = r["failed_cases"]
            if len(cases) == r["cases"] > 1:
                lines.append(f"    in all {len(cases)} cases")
            elif cases[0]:
                lines.append(f"    in {len(cases)} of {r['cases']} cases: {' '.join(cases)}")
            if r["reason"] in said:
                lines.append(f"    the same reason as {said[r['reason']]}")
            else:
                said[r["reason"]] = name
                lines += ["    " + l for l in r["reason"].splitlines()]
    if report["output"]:
        lines += ["", "Your program printed (last lines):", report["output"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda msg: p.exit(2, f"{p.prog}: error: {msg} (--help lists the options)\n")
    p.add_argument("assignment", help="an assignment folder name, e.g. a1_trig_param")
    p.add_argument("folder", help="the folder of submissions")
    p.add_argument("--out", default=None, help="where to write grades.csv and the feedback (default out/grades/<assignment>)")
    p.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for the whole grading of one submission")
    p.add_argument("--call_timeout", type=float, default=60,
                   help="seconds a submission may take for one request of a test (and for its import)")
    a = p.parse_args(argv)

    name = Path(a.assignment).name
    grader = HERE / name / "grader.py"
    if not grader.is_file():
        choices = sorted(d.name for d in HERE.iterdir() if (d / "grader.py").is_file())
        p.error(f"no assignment {a.assignment!r}; choose from {choices}")
    folder = Path(a.folder)
    if not folder.is_dir():
        p.error(f"{folder} is not a folder")
    submissions = find_submissions(folder)
    if not submissions:
        p.error(f"no submissions in {folder} (expected *.py files or */student.py)")
    if a.jobs < 1:
        p.error(f"--jobs {a.jobs}: must be >= 1")
    if min(a.timeout, a.call_timeout) <= 0:
        p.error(f"--timeout {a.timeout:g}, --call_timeout {a.call_timeout:g}: both must be > 0 seconds")
    out = Path(a.out or ROOT / "out" / "grades" / name)
    out.mkdir(parents=True, exist_ok=True)

    digest = grading_files_digest()
    changed = []                               # the students after whose grading the files had changed

    def run(student):
        result = grade_one(grader, submissions[student].resolve(), a.timeout, a.call_timeout)
        if changed or grading_files_digest() != digest:
            changed.append(student)
            return None, "grading files changed", (f"the grading files had changed when {changed[0]} was graded; "
                                                   "restore them (git checkout) and grade again"), result[3]
        return result

    students = list(submissions)
    with ThreadPoolExecutor(a.jobs) as pool:
        results = list(tqdm(pool.map(run, students), total=len(students), desc=f"grading {name}", unit="submission"))

    rows = []
    for student, (report, status, detail, output) in zip(students, results):
        (out / f"{student}.txt").write_text(feedback(student, report, status, detail, output))
        if report is None:
            rows.append([student, 0, "", 0.0, "", status, " ".join(detail.split())])
            continue
        failed = [t for t, r in report["tests"].items() if r["outcome"] != "passed"]
        rows.append([student, f"{report['earned']:g}", f"{report['total']:g}",
                     round(100 * report["earned"] / report["total"], 1), " ".join(failed), status, " ".join(detail.split())])
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "points", "total", "percent", "failed_tests", "status", "detail"])
        w.writerows(rows)

    width = max(len(s) for s in students)
    for student, points, total, percent, _, status, detail in rows:
        print(f"{student:<{width}}  {points:>5} / {total:<5} {percent:>6}%  {status}" + (f": {detail.splitlines()[0][:100]}" if detail else ""))
    print(f"wrote {out / 'grades.csv'} and one feedback file per student")
    if changed:
        raise SystemExit(f"error: the grading files had changed when {changed[0]} was graded: restore them and grade again")
    return rows


if __name__ == "__main__":
    main()
