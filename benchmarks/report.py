"""docs/benchmarks.md is written by several benchmarks: each owns the part between its own pair of markers."""

from pathlib import Path

DEFAULT_MARKDOWN = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def update_markdown(path: Path, section: str, start_mark: str, end_mark: str) -> None:
    """Replace what lies between the markers, keeping the rest of the file; add the section if absent."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = text.find(start_mark), text.find(end_mark)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(end_mark) :]
    elif start == -1 and end == -1:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        raise ValueError(f"{path}: the markers {start_mark} / {end_mark} are unpaired or out of order")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_section(path: Path, name: str, body: str) -> None:
    """Write ``body`` as the section between ``name``'s markers."""
    start, end = markers(name)
    update_markdown(path, f"{start}\n{body}\n{end}", start, end)


def publish(path: Path, name: str, lines: list[str]) -> str:
    """Write ``lines`` as ``name``'s section of ``path`` and print them; returns the text."""
    text = "\n".join(lines)
    write_section(path, name, text)
    print(text)
    return text
