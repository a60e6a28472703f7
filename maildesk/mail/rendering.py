"""Mail templates to text: the shipped ones, an admin's overrides, and what failed where.

Used by ``outbox.Mailer`` to make each mail, and by ``samples`` to check every template before
maildesk uses one. Jinja2, sandboxed (``ImmutableSandboxedEnvironment``) with
``StrictUndefined``: customer text is only ever data here, never a template, and HTML is
autoescaped. A failure is a ``TemplateError`` whose ``problem`` names the file and the line.
``render_page`` draws maildesk's own pages that are no mail (the report's HTML) with the same
engine, autoescaped, so Jinja2 stays in this one module.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape


def shipped_templates() -> Path:
    """The templates directory shipped with maildesk (a source checkout or the installed copy)."""
    source = Path(__file__).resolve().parents[2] / "templates"  # maildesk/mail/ -> the checkout
    if (source / "ack.txt.j2").is_file():
        return source
    return Path(str(resources.files("maildesk") / "templates"))


TEXT, HTML = ".txt.j2", ".html.j2"


@dataclass(frozen=True, slots=True)
class Rendered:
    """One mail made from its templates: the subject and the text and/or HTML body."""

    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template that failed: its file, the line in it (when known) and what went wrong."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.message}"
            if self.line
            else f"{self.path}: {self.message}"
        )


class TemplateError(Exception):
    """Rendering a template failed; ``problem`` names the file and line."""

    def __init__(self, problem: TemplateProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class Templates:
    """Jinja2 mail templates: operator files only, sandboxed, StrictUndefined.

    A mail ``<name>`` is ``<name>.txt.j2`` (it sets the subject with ``{% set subject %}``)
    and/or ``<name>.html.j2`` (autoescaped). A mail comes wholly from ``[desk] templates_dir``
    when that holds either file of it, else wholly from the shipped templates: an override of
    one half alone sends that half alone, never the other shipped half beside it. Files are
    read once (at the check maildesk makes when it starts or reloads, else at first use) and
    not again until the next reload, so what is sent is what was checked.
    """

    def __init__(self, override: Path | None = None) -> None:
        self.shipped = shipped_templates()
        self.override = override
        self.text, self.html = self._environments([override, self.shipped])
        self._shipped_text, self._shipped_html = self._environments([self.shipped])
        self._overridden = frozenset(_files(override)) if override is not None else frozenset()
        self._shipped_files = frozenset(_files(self.shipped))

    @staticmethod
    def _environments(
        dirs: Sequence[Path | None],
    ) -> tuple[ImmutableSandboxedEnvironment, ImmutableSandboxedEnvironment]:
        common: dict[str, Any] = {
            "loader": jinja2.FileSystemLoader([str(p) for p in dirs if p is not None]),
            "undefined": jinja2.StrictUndefined,
            "keep_trailing_newline": True,
            "trim_blocks": True,
            "lstrip_blocks": True,
            "auto_reload": False,
        }
        text = ImmutableSandboxedEnvironment(autoescape=False, **common)  # noqa: S701
        html = ImmutableSandboxedEnvironment(autoescape=True, **common)
        html.filters["paragraphs"] = _paragraphs
        for env in (text, html):
            env.filters["filesize"] = filesize
        return text, html

    def overridden(self, name: str) -> bool:
        """Whether mail ``name`` comes from ``templates_dir``."""
        return name + TEXT in self._overridden or name + HTML in self._overridden

    def shipped_has(self, name: str) -> bool:
        return name + TEXT in self._shipped_files or name + HTML in self._shipped_files

    def render(self, name: str, context: dict[str, Any]) -> Rendered:
        """Mail ``name`` from wherever it comes; ``TemplateError`` names the file and line."""
        if self.overridden(name):
            files = self._overridden
            return self._render(self.text, self.html, name, files, context)
        return self.render_shipped(name, context)

    def render_shipped(self, name: str, context: dict[str, Any]) -> Rendered:
        """Mail ``name`` from the shipped templates, whatever ``templates_dir`` holds."""
        files = self._shipped_files
        return self._render(self._shipped_text, self._shipped_html, name, files, context)

    def _render(
        self,
        text_env: jinja2.Environment,
        html_env: jinja2.Environment,
        name: str,
        files: frozenset[str],
        context: dict[str, Any],
    ) -> Rendered:
        subject, text, html = None, None, None
        try:
            if name + TEXT in files:
                module = _module(text_env, name + TEXT, context)
                text, subject = str(module), _subject(module)
            if name + HTML in files:
                module = _module(html_env, name + HTML, context)
                html, subject = str(module), subject if text is not None else _subject(module)
            if text is None and html is None:
                raise jinja2.TemplateNotFound(name + TEXT)
            if not subject and text is None and name + TEXT in self._shipped_files:
                # an HTML half alone that does not set the subject: the shipped text's subject
                subject = _subject(_module(self._shipped_text, name + TEXT, context))
        except Exception as exc:  # noqa: BLE001 - a template may raise anything; name where
            raise TemplateError(_problem(exc, name)) from exc
        return Rendered(subject or "", text, html)

    def names(self, prefix: str = "") -> list[str]:
        loader = self.text.loader
        assert loader is not None
        return sorted(n for n in loader.list_templates() if n.startswith(prefix))

    def mails(self) -> list[str]:
        """Every mail maildesk makes from templates: the shipped ones and every canned reply."""
        names = {_mail_name(f) for f in self._shipped_files}
        names |= {f[: -len(TEXT)] for f in self._overridden if _canned(f)}
        return sorted(names - {""})

    def one_half(self) -> list[tuple[str, str]]:
        """Overridden mails whose other half is shipped but not used: ``("ack", ".txt.j2")``
        (``ack`` goes out as text only, the shipped ``ack.html.j2`` left out)."""
        halves = []
        for name in self.mails():
            present = [h for h in (TEXT, HTML) if name + h in self._overridden]
            if len(present) == 1:
                other = HTML if present[0] == TEXT else TEXT
                if name + other in self._shipped_files:
                    halves.append((name, present[0]))
        return halves

    def strays(self) -> list[str]:
        """Files in ``templates_dir`` that are no mail's template: a partial that others
        include, a misspelt name that would never be used, or HTML for a canned reply."""
        mails = set(self.mails())
        return sorted(
            f
            for f in self._overridden
            if _mail_name(f) not in mails or (f.startswith("canned/") and f.endswith(HTML))
        )

    def shown(self, path: str) -> str:
        """A template file as an admin knows it: relative to ``templates_dir`` (or to the
        shipped templates), else as it is."""
        for base in (self.override, self.shipped):
            if base is not None and Path(path).is_relative_to(base):
                return Path(path).relative_to(base).as_posix()
        return path


def _files(directory: Path) -> list[str]:
    """The template files under ``directory``, as loader names (``canned/thanks.txt.j2``)."""
    if not directory.is_dir():
        return []
    return [
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*.j2")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]


def _canned(filename: str) -> bool:
    """A canned reply's file: ``canned/<name>.txt.j2`` (canned replies are text only)."""
    return filename.startswith("canned/") and filename.endswith(TEXT)


def _mail_name(filename: str) -> str:
    """``ack`` for ``ack.txt.j2``; "" for a file that is no mail's half."""
    for half in (TEXT, HTML):
        if filename.endswith(half) and len(filename) > len(half):
            return filename[: -len(half)]
    return ""


def _module(env: jinja2.Environment, filename: str, context: dict[str, Any]) -> Any:
    """The template run with ``context``: its text (``str()``) and what it set."""
    template = env.get_template(filename)
    try:
        return template.make_module(context)
    except Exception:  # noqa: BLE001 - re-raised with the template's lines in the traceback
        env.handle_exception()  # (render() does this itself; make_module() does not)


def _subject(module: Any) -> str:
    """The ``subject`` a template set, as plain text (an HTML template's is escaped markup)."""
    value = getattr(module, "subject", "")
    return (value.unescape() if isinstance(value, Markup) else str(value)).strip()


def _problem(exc: BaseException, name: str) -> TemplateProblem:
    """One line for a template that failed: the file and line from a syntax error, or from
    the template's frame in the traceback (Jinja2 maps those to template lines)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateProblem(exc.filename or exc.name or name, exc.lineno, message)
    if isinstance(exc, jinja2.TemplateNotFound):
        message = f"template {exc.name} not found"
    elif not isinstance(exc, jinja2.TemplateError):
        message = f"{type(exc).__name__}: {message}"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2"):
            return TemplateProblem(frame.filename, frame.lineno, message)
    return TemplateProblem(name, None, message)


def render_page(source: str, context: dict[str, Any]) -> str:
    """One of maildesk's own HTML templates (not an operator's, not a mail) run with ``context``;
    every value is escaped unless it is ``Markup``."""
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.from_string(source).render(context)


def filesize(size: int) -> str:
    """Bytes as people read them: "812 bytes", "48 KB", "25.0 MB" (powers of 1000)."""
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1000:.0f} KB"
    return f"{size / 1_000_000:.1f} MB"


def _paragraphs(text: str) -> Any:
    """Plain text to escaped HTML paragraphs (customer text is never HTML)."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    return Markup("\n").join(
        Markup("<p>")
        + Markup("<br>\n").join(escape(line) for line in b.splitlines())
        + Markup("</p>")
        for b in blocks
    )
