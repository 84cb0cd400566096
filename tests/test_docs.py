"""The documentation is self-contained: no file cites the team's private brief, which users cannot read, and every
link into ``docs/method.md`` (the project's own description of the method) lands on one of its headings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD_PAGE = ROOT / "docs" / "method.md"
# Generated outputs of past runs, kept as they were printed.
SKIPPED_FOLDERS = ("docs/results/",)

_BRIEF = "SP" + "EC"  # spelled apart so that this file does not match its own pattern
BRIEF_CITATION = re.compile(rf"\b{_BRIEF}\b|{_BRIEF}\.md")
# Links to a page of docs/ with an anchor: docs/method.md#<anchor> from anywhere, method.md#<anchor> within docs/,
# and ](#<anchor>) inside the page itself.
PAGE_LINK = re.compile(r"(?<![\w.-])(?:docs/)?([\w-]+\.md)#([\w-]+)")
OWN_ANCHOR = re.compile(r"\]\(#([\w-]+)\)")
# Plain-text pointers into the method page: docs/method.md, 'The weight saliency mask' (or "...", or ('...'), also
# across a comment's line break).
METHOD_POINTER = re.compile(r"\bmethod\.md,?[\s#]*\(?\s*(?:'([^'\n]+)'|\"([^\"\n]+)\")")


def project_files() -> list[Path]:
    """Tracked files, plus new ones that are not ignored (they would be committed), that exist and are text."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no file list to check")
    files = []
    for name in sorted(set(filter(None, listed.split("\0")))):
        path = ROOT / name
        if name.startswith(SKIPPED_FOLDERS) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(page: Path) -> list[str]:
    """The headings of a markdown page, in order (lines in fenced code blocks are not headings)."""
    found, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            found.append(match.group(1))
    return found


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page (a repeated heading gets -1, -2, ... as on GitHub)."""
    result: set[str] = set()
    seen: dict[str, int] = {}
    for heading in headings(page):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


def test_github_anchor_rules():
    assert github_anchor("The weight saliency mask") == "the-weight-saliency-mask"
    assert github_anchor("Sharded training (FSDP2)") == "sharded-training-fsdp2"
    assert github_anchor("Concept-erasure baselines: ESD & `fmn`") == "concept-erasure-baselines-esd--fmn"


def test_no_file_cites_the_private_brief():
    citing = [
        f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}"
        for path in project_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if BRIEF_CITATION.search(line)
    ]
    assert not citing, (
        "these lines cite a file users cannot read; point at the section of docs/method.md that says it instead:\n"
        + "\n".join(citing)
    )


def test_the_method_page_mentions_no_outside_file():
    text = METHOD_PAGE.read_text()
    assert not BRIEF_CITATION.search(text)
    assert "/work/" not in text and "shared/" not in text


def test_the_method_page_has_its_sections():
    assert {"the-weight-saliency-mask", "classifier-unlearning", "diffusion-unlearning", "concept-erasure-baselines",
            "metrics", "classifier-metrics", "generation-metrics", "nudity", "forgetting-scenarios-and-splits",
            "choices"} <= anchors(METHOD_PAGE)


def test_every_link_into_the_docs_has_its_heading():
    pages = {page.name: anchors(page) for page in (ROOT / "docs").glob("*.md")}
    method_headings = {heading.strip().lower() for heading in headings(METHOD_PAGE)}
    broken = []
    for path in project_files():
        name, text = path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")
        links = [(page, anchor) for page, anchor in PAGE_LINK.findall(text) if page in pages]
        if path == METHOD_PAGE:
            links += [(METHOD_PAGE.name, anchor) for anchor in OWN_ANCHOR.findall(text)]
        broken += [f"{name}: {page}#{anchor}" for page, anchor in links if anchor not in pages[page]]
        for quoted in METHOD_POINTER.findall(text):
            heading = (quoted[0] or quoted[1]).strip()
            if heading.lower() not in method_headings:
                broken.append(f"{name}: method.md, {heading!r}")
    assert not broken, "pointers to headings the docs do not have:\n" + "\n".join(broken)
