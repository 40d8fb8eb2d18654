"""Deliberately wrong solutions, to show that each grader catches a mistake.

A wrong_*.py file is an assignment's reference solution with a few lines replaced: it
names the lines and their wrong versions, and `reference_with` runs solution.py with
those replacements in the wrong file's own module. The mistake is all the file shows,
and everything else follows the reference as it changes."""

from pathlib import Path


def reference_with(module_globals, *replacements):
    """Execute the solution.py next to the calling module, each (right, wrong) line
    replaced, into that module's globals. Each right line must occur exactly once."""
    here = Path(module_globals["__file__"])
    source = here.with_name("solution.py").read_text()
    for right, wrong in replacements:
        if source.count(right) != 1:
            raise AssertionError(f"{here.name}: the line {right.strip()!r} occurs "
                                 f"{source.count(right)} times in solution.py, not once")
        source = source.replace(right, wrong)
    doc = module_globals.get("__doc__")
    exec(compile(source, str(here), "exec"), module_globals)
    module_globals["__doc__"] = doc          # keep the wrong file's own description
