"""docs/walkthrough.md stays true as the code changes: every `module.name` it mentions
(soflow.fm_loss, toy2d.GaussianMixture.solve, dit.DiT, ...) exists, every relative
link and every .py file it names exists, it covers every public function of
soflow.py, it discusses every equation of the paper's method (Eq. 1-19), the values
of the guidance decay it quotes are soflow.guidance_decay's, and neither it nor the
classroom's files cite documents that readers do not have.

    python tests/test_walkthrough.py      # draws docs/guidance_decay.png again
"""

import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

import soflow

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "walkthrough.md"
MODULES = sorted(p.stem for p in ROOT.glob("*.py"))
FILE_SUFFIXES = {"py", "md", "png", "txt", "json", "npz", "csv", "pt"}   # toy2d.png is a file, not an attribute


def text():
    return DOC.read_text()


def code_names(doc):
    """{'soflow.fm_loss', 'toy2d.GaussianMixture.velocity', ...}: the repository modules'
    dotted names anywhere in the document (prose and code blocks), file names excluded."""
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, MODULES)) + r")\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
    names = set()
    for m in pattern.finditer(doc):
        if m.group(2).split(".")[0] not in FILE_SUFFIXES:
            names.add(f"{m.group(1)}.{m.group(2)}")
    return names


def resolve(name):
    module, *attrs = name.split(".")
    obj = importlib.import_module(module)
    for a in attrs:
        obj = getattr(obj, a)
    return obj


def test_the_document_exists_and_is_substantial():
    lines = text().splitlines()
    assert 300 <= len(lines) <= 600, f"{len(lines)} lines"
    assert len(code_names(text())) >= 40


def test_every_code_name_exists():
    missing = []
    for name in sorted(code_names(text())):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/walkthrough.md names what does not exist: {missing}"


def test_the_name_checker_can_fail():
    """The checks above really look: a made-up name is found and does not resolve."""
    names = code_names("see `soflow.no_such_function` and `toy2d.png` and soflow.py")
    assert names == {"soflow.no_such_function"}
    with pytest.raises(AttributeError):
        resolve("soflow.no_such_function")


def test_relative_links_and_named_files_exist():
    doc = text()
    links = re.findall(r"\]\(([^)\s]+)\)", doc)                       # [text](target) and ![alt](target)
    relative = [l.split("#")[0] for l in links if not re.match(r"[a-z]+://|#|mailto:", l)]
    assert "toy2d.png" in relative, "the walkthrough shows the toy figure"
    missing = [l for l in relative if not (DOC.parent / l).exists()]
    assert not missing, f"links to missing files (relative to docs/): {missing}"
    py_files = set(re.findall(r"(?<![\w.-])((?:[\w-]+/)*[\w-]+\.py)\b", doc))
    py_files -= set(re.findall(r"the authors' ([\w-]+\.py)", doc))      # their release, not this repository
    assert {"soflow.py", "toy2d.py"} <= py_files
    missing = [f for f in sorted(py_files) if not (ROOT / f).is_file()]
    assert not missing, f"names missing files (relative to the repository): {missing}"


def test_every_public_function_of_soflow_is_covered():
    public = {n for n, v in vars(soflow).items() if not n.startswith("_")
              and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == "soflow"}
    assert len(public) >= 20
    covered = {name.split(".")[1] for name in code_names(text()) if name.startswith("soflow.")}
    assert not public - covered, f"docs/walkthrough.md never points at {sorted(public - covered)}"


def test_every_equation_of_the_method_is_discussed():
    seen = set()
    for a, b in re.findall(r"Eq\. (\d+)(?:-(\d+))?", text()):
        seen.update(range(int(a), int(b or a) + 1))
    assert set(range(1, 20)) <= seen, f"equations never mentioned: {sorted(set(range(1, 20)) - seen)}"


def draw_guidance_decay(path):
    """The walkthrough's figure: the released decay of the guidance strength against a
    linear one, as the paper's wording suggests."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg = soflow.SoFlowConfig()
    t = torch.linspace(0.7, 1.0, 601, dtype=torch.float64)
    linear = ((1 - t) / (1 - cfg.guidance_t_max)).clamp(max=1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(t, soflow.guidance_decay(cfg, t), label="released code (soflow.guidance_decay)")
    ax.plot(t, linear, "--", label='"linearly decay ... where t > 0.8" (the paper)')
    ax.set_xlabel("t (noise at t = 1)")
    ax.set_ylabel("factor d(t) on w - 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def test_guidance_decay_numbers_and_figure(tmp_path):
    """The values the walkthrough quotes ("d = 1 at t = 0.8, 0.62 at 0.805, ...") are
    soflow.guidance_decay's at the default settings, and the figure can be drawn."""
    number = r"\d+(?:\.\d+)?"
    quoted = re.search(rf"d = {number} at t = {number}(?:, {number} at {number})+", " ".join(text().split())).group(0)
    pairs = re.findall(rf"({number}) at (?:t = )?({number})", quoted)
    assert len(pairs) >= 4, quoted
    for value, t in pairs:
        got = soflow.guidance_decay(soflow.SoFlowConfig(), torch.tensor([float(t)], dtype=torch.float64)).item()
        assert round(got, len(value.split(".")[-1]) if "." in value else 0) == float(value), (t, got, value)
    draw_guidance_decay(tmp_path / "decay.png")
    assert (tmp_path / "decay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (DOC.parent / "guidance_decay.png").is_file()


if __name__ == "__main__":
    draw_guidance_decay(DOC.parent / "guidance_decay.png")
    print(f"wrote {DOC.parent / 'guidance_decay.png'}")
