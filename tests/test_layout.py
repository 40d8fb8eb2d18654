"""The shape of the code base, as the README promises it: no script imports another script,
the method and the networks import nothing of the project, "The files" in the README names
every file with a place to start reading that exists, and nothing cites a document that
readers do not have."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(p.stem for p in ROOT.glob("*.py"))
SCRIPTS = {"train_imagenet", "train_cifar", "prepare_imagenet", "sample", "toy2d", "bench"}
LEAVES = {"soflow", "dit", "unet", "fid"}


def project_imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names & set(FILES)


def test_import_graph():
    """The project's files (the tests and the classroom's graders use the scripts' functions)."""
    assert SCRIPTS <= set(FILES) and LEAVES <= set(FILES)
    graph = {name: project_imports(ROOT / f"{name}.py") for name in FILES}
    for name, imports in graph.items():
        assert not imports & SCRIPTS, f"{name}.py imports the script(s) {imports & SCRIPTS}"
        assert name not in LEAVES or not imports, f"{name}.py imports {imports}: it must stand alone"
    assert graph["train_imagenet"] >= {"trainer", "soflow", "dit"}        # the checker does see imports


def test_readme_names_every_file_and_where_to_start():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## The files"):readme.index("\n## ", readme.index("## The files") + 1)]
    rows = [r for r in table.splitlines() if r.startswith("| `")]
    named = {f for r in rows for f in re.findall(r"`(\w+)\.py`", r.split("|")[1])}
    assert named == set(FILES), f"not in the table: {set(FILES) - named}; not files: {named - set(FILES)}"
    for r in rows:
        files = re.findall(r"`(\w+)\.py`", r.split("|")[1])
        for name in re.findall(r"`([A-Za-z_][\w.]*)`", r.split("|")[3]):
            if len(files) == 1 and not name.endswith((".py", ".md")):
                obj = __import__(files[0])
                for part in name.split("."):
                    obj = getattr(obj, part)


def test_no_references_readers_cannot_follow():
    """Readers have the paper and the authors' release, not the project's internal notes."""
    paths = [*ROOT.glob("*.py"), *ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("tests/*.py"),
             *ROOT.glob("assignments/**/*.py"), *ROOT.glob("assignments/**/*.md")]
    for path in paths:
        if path.name != "test_layout.py":
            found = re.findall(r"\b(?:SPEC|COMMON)\b(?: section \d+)?|shared/SPEC", path.read_text())
            assert not found, f"{path.relative_to(ROOT)} cites {found}"
