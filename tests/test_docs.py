"""The documentation: README.md is a front page of at most 250 lines, docs/ holds the rest, every relative link in
them resolves (to a file of the repository and, for a #anchor, to a heading of the file it names), and every
setting the code reads is documented in docs/configuration.md."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from support import REPO as REPO_PATH

REPO = Path(REPO_PATH)
README = REPO / "README.md"
DOCS = REPO / "docs"
DOCUMENTS = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250
DOCS_PAGES = [
    "api",
    "authentication",
    "configuration",
    "deployment",
    "reminders",
    "architecture",
    "performance",
    "sync",
    "testing",
]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

# Where the service and its server read their settings: env_int("NAME", ...), os.environ.get("NAME") and the like.
SETTING_READ = re.compile(
    r"(?:os\.environ\.get|os\.getenv|\benv_\w+)\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']|os\.environ\[\s*[\"']([A-Z][A-Z0-9_]*)[\"']\]"
)
DOCUMENTED_SETTING = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \|", re.MULTILINE)


def lines_outside_code_blocks(text):
    in_fence = False
    for line in text.split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            yield line


def link_targets(text):
    """The targets of a markdown text's links, leaving out what code blocks and code spans show."""
    for line in (CODE_SPAN.sub("", line) for line in lines_outside_code_blocks(text)):
        yield from INLINE_LINK.findall(line)
        yield from REFERENCE_DEFINITION.findall(line)


def heading_slug(heading):
    """The anchor GitHub gives a heading: its text, lower case, without punctuation, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return "".join(char for char in text if char.isalnum() or char in " -_").replace(" ", "-")


def anchors(path):
    """Every #anchor a markdown file has: its headings' slugs (a repeated one numbered, as GitHub does) and
    explicit <a id> or <a name> anchors."""
    found = set()
    seen = {}
    for line in lines_outside_code_blocks(path.read_text()):
        found.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading:
            slug = heading_slug(heading.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(document, root=REPO):
    """The relative links of a markdown file that lead nowhere, each with the reason."""
    broken = []
    for target in link_targets(document.read_text()):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / unquote(path)).resolve() if path else document
        if not linked.is_relative_to(root.resolve()):
            broken.append(f"{target}: outside the repository")
        elif not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (linked.suffix != ".md" or unquote(anchor) not in anchors(linked)):
            broken.append(f"{target}: no heading or anchor #{anchor} in {linked.name}")
    return broken


def settings_read_by_the_code():
    sources = [*sorted((REPO / "todo_api").rglob("*.py")), *sorted(REPO.glob("*.py"))]
    return {name for source in sources for match in SETTING_READ.findall(source.read_text()) for name in match if name}


def documented_settings():
    return set(DOCUMENTED_SETTING.findall((DOCS / "configuration.md").read_text()))


def dotenv_example_names():
    lines = (REPO / ".env.example").read_text().split("\n")
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def readme_section(title):
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_is_a_front_page_of_at_most_250_lines():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move the detail into docs/"


def test_docs_has_a_page_per_concern():
    assert sorted(path.stem for path in DOCS.glob("*.md")) == sorted(DOCS_PAGES)


def test_readme_links_every_docs_page():
    linked = {target.partition("#")[0] for target in link_targets(README.read_text())}
    assert {f"docs/{page}.md" for page in DOCS_PAGES} <= linked


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves(document):
    assert broken_links(document) == []


def test_a_missing_file_or_anchor_is_a_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## The user's time zone\n\n## Setup\n\n## Setup\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## `make test` runs\n\n"
        "[fine](other.md#the-users-time-zone) [second](other.md#setup-1) [here](#make-test-runs) "
        "[away](https://example.com/#nothing) `[code](missing.md)`\n\n"
        "```sh\n[in a block](missing.md)\n```\n\n"
        "[gone](missing.md) [no heading](other.md#nowhere) [no anchor here](#nowhere) [third](other.md#setup-2)\n\n"
        "[out](../outside.md)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading or anchor #nowhere in other.md",
        "#nowhere: no heading or anchor #nowhere in page.md",
        "other.md#setup-2: no heading or anchor #setup-2 in other.md",
        "../outside.md: outside the repository",
    ]


def test_every_setting_the_code_reads_is_in_the_configuration_page():
    read = settings_read_by_the_code()
    assert {"DATABASE_URL", "BETTER_AUTH_SECRET", "PORT"} <= read  # the scan still finds where settings are read
    assert sorted(read - documented_settings()) == []


def test_the_configuration_page_documents_only_settings_the_code_reads():
    assert sorted(documented_settings() - settings_read_by_the_code()) == []


def test_dotenv_example_holds_the_settings_the_readme_lists_for_a_deploy():
    names = dotenv_example_names()
    assert len(names) == len(set(names))
    assert set(names) <= documented_settings()
    deploy_section = readme_section("Settings a deploy needs")
    assert [name for name in names if f"`{name}`" not in deploy_section] == []
