"""The one reader of prompt CSVs: the ``prompts.csv`` that ``salun generate`` writes (``file, prompt, seed,
guidance``; ``salun nudity --prompts-csv`` and ``DiffusionDataModule(prompts_csv=...)`` read it), and prompt lists
such as I2P's (``salun generate --prompts-csv``).

:func:`read_prompts_csv` reads a CSV (UTF-8, a header row) into :class:`PromptRow` rows, each with its line in the
file, and refuses, naming the file (and the line): a missing file, a missing column (listing the columns there are),
no rows, and a row whose prompt is empty, because an empty prompt is the unconditional prompt (training on it
trains the null condition; generating from it makes an unguided image). With a ``file_column``, an empty or
repeated file is refused too. What the other cells mean (seeds, guidance scales) is the caller's to check.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp(), "prompts.csv")
    >>> _ = path.write_text("file,prompt,seed,guidance\\nforget/00000.png,a photo of a nude person,7,7.5\\n")
    >>> table = read_prompts_csv(path, {"file": "", "prompt": ""}, file_column="file")
    >>> row = table.rows[0]
    >>> row.line, row.file, row["prompt"], row.get("seed"), table.columns
    (2, 'forget/00000.png', 'a photo of a nude person', '7', ('file', 'prompt', 'seed', 'guidance'))
    >>> _ = path.write_text("file,prompt\\nforget/00000.png,a photo\\nforget/00001.png, \\n")
    >>> read_prompts_csv(path, ["file", "prompt"], file_column="file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../prompts.csv, line 3: the prompt ('prompt') of forget/00001.png is empty: an empty prompt is ...
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

__all__ = ["EMPTY_PROMPT", "PromptRow", "PromptsCsv", "read_prompts_csv"]

EMPTY_PROMPT = "an empty prompt is the unconditional prompt"


@dataclass(frozen=True)
class PromptRow:
    """One data row of a prompt CSV: its cells by column (``""`` for a missing cell) and its line in the file (the
    header is line 1; a row with a quoted line break ends on ``line``)."""

    line: int
    values: Mapping[str, str]
    file_column: Optional[str] = None

    def __getitem__(self, column: str) -> str:
        return self.values[column]

    def get(self, column: Optional[str], default: Optional[str] = None) -> Optional[str]:
        """The cell of ``column``, ``default`` when the CSV has no such column (or ``column`` is ``None``)."""
        return self.values.get(column, default) if column is not None else default

    @property
    def file(self) -> str:
        """The row's image (the ``file_column`` cell, stripped, without a leading ``./``); ``""`` without one."""
        return (self.values.get(self.file_column) or "").strip().removeprefix("./") if self.file_column else ""


@dataclass(frozen=True)
class PromptsCsv:
    """A prompt CSV read by :func:`read_prompts_csv`: where it is, its columns, its rows and its bytes' sha256."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[PromptRow, ...]
    sha256: str


PathLike = Union[str, os.PathLike]


def read_prompts_csv(
    path: PathLike,
    columns: Union[Mapping[str, str], Sequence[str]],
    prompt_column: str = "prompt",
    file_column: Optional[str] = None,
    name: str = "prompts CSV",
    missing_hint: str = "give a CSV with a header row and a 'prompt' column.",
    empty_consequence: str = "",
) -> PromptsCsv:
    """Read a prompt CSV, refusing what no reader can use, each time naming the file and, for a row, its line.

    Args:
        path: the CSV (UTF-8, a byte-order mark allowed; a header row).
        columns: the columns it must have; as a mapping, column -> what to do when it is missing (a sentence, e.g.
            ``"set prompt_column to one of them"``), else a generic fix.
        prompt_column: the column of the prompts, which must not be empty (nor blank) in any row.
        file_column: the column naming each row's image, if any: every row must name one, and each only once.
        name: how the file is named when it does not exist (e.g. the argument that gave it).
        missing_hint: what to do when the file does not exist.
        empty_consequence: what an empty prompt would do there (e.g. ``", so that image would train the null
            condition"``), added to the refusal.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8 or not CSV, a column missing (the message lists the CSV's columns), no rows below the
            header, an empty prompt (the file, the line, the image, how many rows more), an empty or repeated file.
    """
    path = Path(path).expanduser()
    wanted = dict(columns) if isinstance(columns, Mapping) else dict.fromkeys(columns, "")
    if prompt_column not in wanted:
        wanted[prompt_column] = ""
    if file_column is not None and file_column not in wanted:
        wanted[file_column] = ""
    if not path.is_file():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist; {missing_hint}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); save it as UTF-8.") from None
    rows: list[PromptRow] = []
    with io.StringIO(text, newline="") as stream:
        reader = csv.DictReader(stream)
        try:
            found = tuple(reader.fieldnames or ())
            missing = [column for column in wanted if column not in found]
            if missing:
                fixes = list(dict.fromkeys(wanted[column] for column in missing if wanted[column]))
                fix = "; ".join(fixes) or f"give a CSV with the columns {', '.join(map(repr, wanted))}"
                raise ValueError(
                    f"{path} has no column {' or '.join(map(repr, missing))} (its columns: "
                    f"{', '.join(found) or 'none'}); {fix}."
                )
            for record in reader:
                values = {column: record.get(column) or "" for column in found}
                rows.append(PromptRow(reader.line_num, values, file_column))
        except csv.Error as error:
            raise ValueError(f"{path}, line {reader.line_num}: not a CSV row ({error}); fix or remove it.") from None
    if not rows:
        raise ValueError(f"{path} has no rows below its header; give one row per prompt.")
    empty = [row for row in rows if not row[prompt_column].strip()]
    if empty:
        first = empty[0]
        of = f" of {first.file}" if first.file else ""
        others = [str(row.line) for row in empty[1:]]
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        more = f" (and {len(others)} more rows: line {shown})" if others else ""
        raise ValueError(
            f"{path}, line {first.line}: the prompt ({prompt_column!r}){of} is empty{more}: {EMPTY_PROMPT}"
            f"{empty_consequence}; give the row its prompt or remove it."
        )
    if file_column is not None:
        seen: dict[str, int] = {}
        for row in rows:
            if not row.file:
                raise ValueError(f"{path}, line {row.line}: the file column ({file_column!r}) is empty; name the row's "
                                 "image or remove the row.")
            if row.file in seen:
                raise ValueError(f"{path}, line {row.line}: {row.file!r} is listed twice (first on line "
                                 f"{seen[row.file]}); list each image once.")
            seen[row.file] = row.line
    return PromptsCsv(path, found, tuple(rows), hashlib.sha256(data).hexdigest())
