"""The schemas of saved files: a TypedDict beside each format's writer names the JSON type of every field the lab
reads back, and check_schema holds a document to it on reading.

In a schema, Number (lora_core.numbers) is a finite int or float, NotRequired marks a field older files may lack,
and a newer file's extra keys are allowed. Pydantic checks strictly: a number saved as a string, or null where an
object belongs, is refused with the field's path, so that no page or command fails later on a value of the wrong
type. TypedDicts come from typing_extensions: pydantic reads typing's TypedDict only from Python 3.12 on.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from lora_core.errors import ArtifactError


def check_schema(data: dict[str, Any], schema: type, path: Path | str, what: str) -> None:
    """ArtifactError naming the file and the first field of `data` that does not fit `schema` (a TypedDict)."""
    try:
        _validator(schema).validate_python(data, strict=True)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "the document"
        if error["type"] == "missing":
            problem = "missing"
        else:
            value = error["input"]
            found = "null" if value is None else f"{type(value).__name__} {_short(value)}"
            problem = f"{error['msg'].removeprefix('Input ')}, found {found}"
        raise ArtifactError(f"{path} is not a readable {what}: {field} {problem}") from None


@functools.cache
def _validator(schema: type) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
