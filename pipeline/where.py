"""``decode-job --where``: a small, safe filter language, parsed here into a pyarrow expression.

An expression is evaluated by Arrow, never by Python's ``eval`` or pandas' ``query``, so an
archive's user can pass one from anywhere without running code. The grammar::

    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expr ")" | comparison
    comparison := COLUMN OP VALUE                      OP: == = != < <= > >=
                | COLUMN ["not"] "in" "(" VALUE ("," VALUE)* ")"
                | COLUMN "is" ["not"] "null"
    VALUE      := 'text' | "text" | integer | decimal | true | false

Example: ``status == 'ok' and width >= 256 and key in ('a/1', 'a/2')``. Columns are checked
against the archive's schema (the records themselves cannot be filtered on). Because the result is
a pyarrow expression, readers push it down: row groups whose statistics cannot match are skipped.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

_TOKEN = re.compile(r"""\s*(?:(?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
                    |(?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
                    |(?P<op>==|!=|<=|>=|=|<|>|\(|\)|,)|(?P<name>[A-Za-z_][A-Za-z0-9_]*))""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
_OPS = {"==": pc.equal, "=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
        ">=": pc.greater_equal}
UNFILTERABLE = ("record", "bitstream")  # the record column, under today's and layout 1's name


class WhereError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise WhereError(f"--where {text!r}: cannot read it at character {pos + 1}: {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        value, start = m.group(kind), m.start(kind)
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        out.append((kind, value, start))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.i = text, _tokens(text), 0
        self.columns: set[str] = set()

    def _peek(self, kind: str | None = None, value: str | None = None) -> bool:
        if self.i >= len(self.tokens):
            return False
        k, v, _ = self.tokens[self.i]
        return (kind is None or k == kind) and (value is None or v == value)

    def _take(self, kind: str | None = None, value: str | None = None) -> str:
        if not self._peek(kind, value):
            where = self.tokens[self.i][2] + 1 if self.i < len(self.tokens) else len(self.text) + 1
            wanted = value or kind or "more"
            raise WhereError(f"--where {self.text!r}: expected {wanted} at character {where}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def parse(self) -> pc.Expression:
        expr = self._or()
        if self.i != len(self.tokens):
            self._take("end")
        return expr

    def _or(self) -> pc.Expression:
        expr = self._and()
        while self._peek("keyword", "or"):
            self._take()
            expr = expr | self._and()
        return expr

    def _and(self) -> pc.Expression:
        expr = self._not()
        while self._peek("keyword", "and"):
            self._take()
            expr = expr & self._not()
        return expr

    def _not(self) -> pc.Expression:
        if self._peek("keyword", "not"):
            self._take()
            return ~self._not()
        if self._peek("op", "("):
            self._take()
            expr = self._or()
            self._take("op", ")")
            return expr
        return self._comparison()

    def _comparison(self) -> pc.Expression:
        name = self._take("name")
        if name in UNFILTERABLE:
            raise WhereError(f"--where {self.text!r}: the {name} column cannot be filtered on")
        self.columns.add(name)
        field = pc.field(name)
        if self._peek("keyword", "is"):
            self._take()
            negate = self._peek("keyword", "not") and bool(self._take())
            self._take("keyword", "null")
            return field.is_valid() if negate else field.is_null()
        negate = self._peek("keyword", "not") and bool(self._take())
        if self._peek("keyword", "in"):
            self._take()
            self._take("op", "(")
            values = [self._value()]
            while self._peek("op", ","):
                self._take()
                values.append(self._value())
            self._take("op", ")")
            expr = field.isin(values)
            return ~expr if negate else expr
        if negate:
            self._take("keyword", "in")
        op = self._take("op")
        if op not in _OPS:
            raise WhereError(f"--where {self.text!r}: {op!r} is not a comparison (use == != < <= > >=)")
        return _OPS[op](field, pc.scalar(self._value()))

    def _value(self):
        if self._peek("string"):
            raw = self._take()
            return re.sub(r"\\(.)", r"\1", raw[1:-1])
        if self._peek("number"):
            raw = self._take()
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        if self._peek("keyword", "true") or self._peek("keyword", "false"):
            return self._take() == "true"
        self._take("value")
        return None


def parse_where(text: str) -> tuple[pc.Expression, set[str]]:
    """The pyarrow expression of ``text`` and the columns it names; a :class:`WhereError` says what is wrong."""
    parser = _Parser(text)
    return parser.parse(), parser.columns


def check_where(text: str, schema: pa.Schema) -> pc.Expression:
    """Parse ``text`` and check it against ``schema`` (evaluated on an empty table, so types must agree)."""
    expr, columns = parse_where(text)
    allowed = [n for n in schema.names if n not in UNFILTERABLE]
    unknown = sorted(columns - set(allowed))
    if unknown:
        raise WhereError(f"--where {text!r} names {unknown}, which the archive does not have (columns: {allowed})")
    try:
        schema.empty_table().select(allowed).filter(expr)
    except (pa.ArrowException, TypeError) as e:
        raise WhereError(f"--where {text!r} does not evaluate on the archive's columns: {e}") from None
    return expr
