"""Read the one form of an HTML page and fill it as a simulated user would.

The load generator knows nothing about the wizard's versions: it discovers what each
page asks for from the page itself (``<input name=...>``, ``<select name=...>``), which
is what makes it notice when a page changed under a user. Pure (``html.parser``).
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser


@dataclass(frozen=True, kw_only=True)
class FormField:
    name: str
    kind: str
    """``text``, ``email``, ``hidden``, ``select``, ... (the input's ``type``)."""
    value: str = ""
    """The preset value (hidden inputs) or, for a select, its first option."""


@dataclass(frozen=True, kw_only=True)
class Form:
    action: str
    method: str
    """Upper case: ``GET`` or ``POST``."""
    fields: tuple[FormField, ...]


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.form: Form | None = None
        self._open = False
        self._fields: list[FormField] = []
        self._select: str | None = None
        self._select_value: str | None = None
        self._action = ""
        self._method = "GET"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.form is None and not self._open:
            self._open = True
            self._action = a.get("action", "")
            self._method = (a.get("method") or "GET").upper()
        elif not self._open:
            return
        elif tag == "input" and a.get("name"):
            kind = a.get("type", "text").lower()
            if kind not in ("submit", "button", "reset", "image"):
                self._fields.append(FormField(name=a["name"], kind=kind, value=a.get("value", "")))
        elif tag == "select" and a.get("name"):
            self._select, self._select_value = a["name"], None
        elif tag == "option" and self._select is not None and self._select_value is None:
            self._select_value = a.get("value", "")
        elif tag == "textarea" and a.get("name"):
            self._fields.append(FormField(name=a["name"], kind="textarea"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select" and self._select is not None:
            self._fields.append(
                FormField(name=self._select, kind="select", value=self._select_value or "")
            )
            self._select = None
        elif tag == "form" and self._open:
            self._open = False
            self.form = Form(action=self._action, method=self._method, fields=tuple(self._fields))


def first_form(page: str) -> Form | None:
    """The first complete ``<form>`` of ``page``, or None when it has none."""
    parser = _FormParser()
    parser.feed(page)
    parser.close()
    return parser.form


def fill(form: Form, *, user: int, session: int) -> dict[str, str]:
    """Values a user would type: a name, a unique email, the first option of each select."""
    values: dict[str, str] = {}
    for field in form.fields:
        if field.kind in ("hidden", "select") or field.value:
            values[field.name] = field.value
        elif field.kind == "email":
            values[field.name] = f"user{user}.{session}@example.test"
        elif field.kind == "checkbox":
            continue  # an unticked box is not sent
        elif field.kind == "number":
            values[field.name] = str(user % 50 + 1)
        else:
            values[field.name] = f"User {user}-{session}"
    return values
