"""common.handlebars: the Handlebars subset SES applies to inline templates."""

from __future__ import annotations

from sesflow.common.handlebars import escape, render


def test_double_braces_escape_in_every_part_and_triple_braces_do_not() -> None:
    data = {"x": "<b>&\"'`=</b>"}
    assert render("{{x}}", data) == "&lt;b&gt;&amp;&quot;&#x27;&#x60;&#x3D;&lt;/b&gt;"
    assert render("{{{x}}}", data) == data["x"]
    assert render("{{ x }}|{{{ x }}}", {"x": "a"}) == "a|a"


def test_paths_missing_values_and_javascript_rendering() -> None:
    data = {"u": {"n": "Ada", "ok": True, "age": 36.0, "ratio": 0.5}, "none": None}
    assert render("{{u.n}} {{u.ok}} {{u.age}} {{u.ratio}}", data) == "Ada true 36 0.5"
    assert render("[{{missing}}][{{none}}][{{u.n.deeper}}]", data) == "[][][]"


def test_escaped_mustaches_stay_literal() -> None:
    assert render(r"\{{x}} {{x}}", {"x": "v"}) == "{{x}} v"
    assert render(r"\\{{x}}", {"x": "v"}) == "\\v"
    assert render("{ x } }} {", {}) == "{ x } }} {"
    assert escape("plain") == "plain"
