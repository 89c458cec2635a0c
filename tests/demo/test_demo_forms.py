"""Reading and filling a page's form, as the load generator does (pure)."""

from __future__ import annotations

from skewless.demo.forms import Form, FormField, fill, first_form

PAGE = """<html><body><a href="/x">x</a>
<form method="post" action="/signup/2">
  <input name="csrf" type="hidden" value="t0k">
  <label>Company</label><input id="c" name="company" type="text" required>
  <input name="email" type="email">
  <select name="role"><option value="engineer">engineer</option><option>designer</option></select>
  <input type="checkbox" name="terms">
  <button name="go">Next</button><input type="submit" name="s" value="Go">
</form>
<form action="/second"><input name="ignored"></form></body></html>"""


def test_first_form_lists_its_fields_only() -> None:
    form = first_form(PAGE)
    assert form == Form(
        action="/signup/2",
        method="POST",
        fields=(
            FormField(name="csrf", kind="hidden", value="t0k"),
            FormField(name="company", kind="text"),
            FormField(name="email", kind="email"),
            FormField(name="role", kind="select", value="engineer"),
            FormField(name="terms", kind="checkbox"),
        ),
    )


def test_a_page_without_form_has_none() -> None:
    assert first_form("<p>You're signed up</p>") is None
    assert first_form("<form action=/x><input name=a>") is None  # never closed


def test_fill_types_a_value_for_every_field_but_unticked_boxes() -> None:
    form = first_form(PAGE)
    assert form is not None
    values = fill(form, user=3, session=7)
    assert values == {
        "csrf": "t0k",
        "company": "User 3-7",
        "email": "user3.7@example.test",
        "role": "engineer",
    }
