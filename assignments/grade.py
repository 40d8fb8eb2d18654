"""
Grade a whole class: run one assignment's grader on every submission in a folder.

    python assignments/grade.py a1_trig_param submissions/a1/
    python assignments/grade.py a2_consistency_loss submissions/a2/ --jobs 2 --out grades/a2

A submission is either a .py file directly in the folder (the student is the file
name: alice.py) or a sub-folder holding student.py (the student is the folder
name: alice/student.py). Each is graded in a process of its own, with a time
limit, exactly as a student grades it:

    SUBMISSION=<file> python -m pytest -q assignments/<assignment>/grader.py

Writes, in --out (default out/grades/<assignment>): grades.csv (student, points,
total, percent, failed tests, status) and <student>.txt, the grader's full output,
to hand back as feedback.
"""

import argparse
import csv
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


def grade_one(grader, path, timeout):
    """Run the grader on one file; returns (report dict or None, status, output)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(grader),
               "--grade-report", str(report)]
        env = {**os.environ, "SUBMISSION": str(path), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return None, f"timeout after {timeout} s", out
        output = proc.stdout + proc.stderr
        if not report.is_file():
            return None, f"grader crashed (exit {proc.returncode})", output
        report = json.loads(report.read_text())
        return report, "could not import" if report.get("import_error") else "ok", output


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("assignment", help="an assignment folder name, e.g. a1_trig_param")
    p.add_argument("folder", help="the folder of submissions")
    p.add_argument("--out", default=None, help="where to write grades.csv and the feedback (default out/grades/<assignment>)")
    p.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per submission")
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
        p.error("--jobs must be >= 1")
    out = Path(a.out or ROOT / "out" / "grades" / name)
    out.mkdir(parents=True, exist_ok=True)

    students = list(submissions)
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(grade_one, grader, submissions[s].resolve(), a.timeout) for s in students]
        results = [f.result() for f in tqdm(futures, desc=f"grading {name}", unit="submission")]

    rows = []
    for student, (report, status, output) in zip(students, results):
        (out / f"{student}.txt").write_text(output)
        if report is None:
            rows.append([student, 0, "", 0.0, "", status])
            continue
        failed = [t for t, r in report["tests"].items() if r["outcome"] != "passed"]
        rows.append([student, f"{report['earned']:g}", f"{report['total']:g}",
                     round(100 * report["earned"] / report["total"], 1), " ".join(failed), status])
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "points", "total", "percent", "failed_tests", "status"])
        w.writerows(rows)

    width = max(len(s) for s in students)
    for student, points, total, percent, _, status in rows:
        print(f"{student:<{width}}  {points:>5} / {total:<5} {percent:>6}%  {status}")
    print(f"wrote {out / 'grades.csv'} and one feedback file per student")
    return rows


if __name__ == "__main__":
    main()
