"""Which ggml ops upstream's Metal, CUDA and Vulkan backends run, read from the
`supports_op` functions of the llama.cpp we compile against (the
llama-cpp-python 0.3.36 sdist), so a graph change that would make the
scheduler fall back to the CPU on one of them is caught on any machine.

    from support.backend_support import load_backends, check_node

    backends = load_backends()           # {"Metal": Backend, "CUDA": ..., "Vulkan": ...}
    verdict = check_node(backends["Metal"], node)   # node: a dict of _native._recorded_ops()
    verdict.ok, verdict.how, verdict.reason

How. Each backend's supports_op is a `switch (op->op)` whose cases return
true, false, or an expression over the node's types, layouts and shapes,
sometimes through nested switches (unary / GLU op, tensor type), local
helpers and lambdas. This module lexes the C/C++/Objective-C source, parses
the function into a small statement tree, and *runs* the switch on a
recorded node with a three-valued interpreter: true, false, or unknown. What
the interpreter knows of a node is what runtime/src/graph_runner.cpp records:
- the op, its unary/GLU sub-op, the types of the result and of every source;
- per tensor the layout predicates upstream tests (ggml_is_contiguous,
  _1, _2, _rows, nb[0] == type size, Vulkan's ggml_vk_dim01_contiguous,
  ne[3] == 1);
- a few op parameters: rope mode, concat dim, argsort order, pool op, and for
  FLASH_ATTN_EXT the K/V head sizes (ne[0] of src 0-2), GQA ratio, mask ne[2],
  max_bias and precision.
Helpers defined in the backend's own source files (ggml_vk_concat_supported,
ggml_metal_supports_mul_mat_op...) and lambdas are interpreted too, with
lazily evaluated arguments. Preprocessor conditionals are resolved with the
macros of an ordinary build (MACROS: no HIP/MUSA, CUB on, flash attention on).

What it cannot see, and how that is handled:
- Shapes other than the ones listed above (ne[1], ne[2], strides nb[1..3],
  buffer sizes): an expression that needs them evaluates to unknown.
- Device properties (Metal simdgroup support and bfloat, Vulkan subgroup
  features and memory model, CUDA compute capability and shared memory):
  ASSUMPTIONS gives the values of a current GPU of each kind (Apple7+/M1+,
  a desktop Vulkan 1.3 driver, CUDA >= 11.7); a verdict that used one says so
  (Verdict.assumed). Older or mobile GPUs may refuse more.
- Code before the switch (the preamble) is not run: Metal refuses BF16
  without has_bfloat, CUDA refuses sources on another CUDA device, Vulkan
  refuses tensors over its max buffer / storage-buffer range (large tensors
  at long contexts on GPUs without 64-bit indexing). PREAMBLE_ANCHORS pins
  what the preamble held when this was written.
- Kernel choice inside a "supported" op (which FA kernel, which mat-mul
  path) is not support and is not looked at.
Where a case cannot be decided (CUDA's FLASH_ATTN_EXT goes through
ggml_cuda_get_best_fattn_kernel, a function with loops), a hand-written rule
in RULES decides it from the recorded parameters; each rule names the source
lines it was written from and carries anchors, snippets that must still be in
that source, so a different pin makes the rule fail loudly rather than
silently answer from stale code. A node whose verdict stays unknown and has
no rule is reported as a failure ("undecided"), never as supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from support.upstream_converter import vendor_subset_dir

# backend -> (file of supports_op, supports_op, other files whose helpers it calls)
SOURCES: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "Metal": (
        "ggml/src/ggml-metal/ggml-metal-device.m",
        "ggml_metal_device_supports_op",
        ("ggml/src/ggml-metal/ggml-metal-common.cpp",),
    ),
    "CUDA": (
        "ggml/src/ggml-cuda/ggml-cuda.cu",
        "ggml_backend_cuda_device_supports_op",
        ("ggml/src/ggml-cuda/fattn.cu",),
    ),
    "Vulkan": ("ggml/src/ggml-vulkan/ggml-vulkan.cpp", "ggml_backend_vk_device_supports_op", ()),
}
_FILES = sorted({f for main, _, extra in SOURCES.values() for f in (main, *extra)})

# Macros of an ordinary build of each backend (CUDA: common.cuh defines
# GGML_CUDA_USE_CUB for CUDART_VERSION >= 11070 and FLASH_ATTN_AVAILABLE
# unless GGML_CUDA_NO_FA).
MACROS: Dict[str, bool] = {
    "GGML_USE_HIP": False,
    "GGML_USE_MUSA": False,
    "GGML_CUDA_USE_CUB": True,
    "FLASH_ATTN_AVAILABLE": True,
    "GGML_CUDA_NO_FA": False,
}

# Device properties the cases read, as a current GPU of each kind has them.
ASSUMPTIONS: Dict[str, Dict[str, Any]] = {
    "Metal": {  # Apple7+ (M1 and later): simdgroup reduction and matrix ops; bfloat from M2 / A15
        "dev->props.has_simdgroup_reduction": True,
        "dev->props.has_simdgroup_mm": True,
        "dev->props.has_bfloat": True,
    },
    "CUDA": {},
    "Vulkan": {  # desktop drivers (NVIDIA, AMD, Intel/Mesa) with Vulkan 1.2+ features
        "device->subgroup_shuffle": True,
        "device->subgroup_vote": True,
        "device->vulkan_memory_model": True,  # else ARGSORT rows are limited to 2^max_workgroup_size_log2
        "device->subgroup_arithmetic": True,
        "device->subgroup_require_full_support": True,
        "device->fp16": True,
    },
}

# Snippets each preamble (the code before `switch (op->op)`) held when this
# module was written; see the module docstring for what they refuse.
PREAMBLE_ANCHORS: Dict[str, Tuple[str, ...]] = {
    "Metal": ("if (!has_bfloat) {", "op->src[i]->type == GGML_TYPE_BF16"),
    "CUDA": ("buft_ctx->device != dev_ctx->device",),
    "Vulkan": ("tensor_size > device->max_buffer_size", "maxStorageBufferRange"),
}


# -- fetching the sources -------------------------------------------------------------------


def _has_sources(root: Path) -> bool:
    return all((root / f).is_file() for f in _FILES)


def upstream_source_dir() -> Path:
    """The vendor/llama.cpp directory of the pinned sdist, holding (at least)
    the backend files this module reads: /tmp/lcp_src where a machine has it
    extracted, else those files extracted once into the cache
    (upstream_converter.vendor_subset_dir; raises UpstreamUnavailable without
    network)."""
    return vendor_subset_dir("ggml-backends", lambda rel: rel in _FILES, _has_sources)


# -- lexing and preprocessing ---------------------------------------------------------------


@dataclass(frozen=True)
class Tok:
    kind: str  # id, num, str, op, pp
    text: str
    line: int


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<pp>\#[^\n]*(?:\\\n[^\n]*)*)
  | (?P<str>@?"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<num>(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)[uUlLfF]*)
  | (?P<id>[A-Za-z_]\w*)
  | (?P<op>->|<<=|>>=|<<|>>|<=|>=|==|!=|&&|\|\||\+\+|--|::|[-+*/%&|^]=|[-+*/%<>=!&|^~?:;,.(){}\[\]@])
  | (?P<other>.)
""",
    re.X | re.S,
)


def lex(text: str) -> List[Tok]:
    out: List[Tok] = []
    line = 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        s = m.group()
        if kind not in ("ws", "comment"):
            out.append(Tok(kind, s, line))
        line += s.count("\n")
    return out


class Unknown:
    """A value the interpreter cannot know; `why` says what it would need."""

    def __init__(self, why: str):
        self.why = why

    def __repr__(self) -> str:
        return f"Unknown({self.why})"


def _pp_condition(expr: str) -> Any:
    """Value of a #if expression over `defined(X)` / X and ! && || (MACROS)."""
    py = re.sub(r"defined\s*\(\s*(\w+)\s*\)|defined\s+(\w+)", lambda m: f"__d_{m.group(1) or m.group(2)}", expr)
    py = py.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
    names = {}
    for name in set(re.findall(r"[A-Za-z_]\w*", py)):
        if name in ("and", "or", "not"):
            continue
        macro = name[4:] if name.startswith("__d_") else name
        if macro not in MACROS:
            return Unknown(f"preprocessor macro {macro}")
        names[name] = MACROS[macro]
    try:
        return bool(eval(py, {"__builtins__": {}}, names))  # noqa: S307 - names are booleans only
    except SyntaxError:
        return Unknown(f"preprocessor expression {expr.strip()}")


def preprocess(tokens: List[Tok]) -> List[Tok]:
    """Resolves #if/#ifdef/#ifndef/#elif/#else/#endif with MACROS. A region
    under an unknown condition becomes the statement `__unknown_pp__;`."""
    out: List[Tok] = []
    # stack entries: [emitting, branch_taken, unknown]
    stack: List[List[Any]] = []

    def emitting() -> bool:
        return all(e[0] for e in stack)

    for t in tokens:
        if t.kind != "pp":
            if emitting():
                out.append(t)
            continue
        m = re.match(r"#\s*(\w+)\s*(.*)", t.text, re.S)
        word, rest = (m.group(1), m.group(2).split("//")[0].strip()) if m else ("", "")
        if word in ("if", "ifdef", "ifndef"):
            cond = (
                _pp_condition(rest)
                if word == "if"
                else _pp_condition(f"defined({rest})")
                if word == "ifdef"
                else _pp_condition(f"!defined({rest})")
            )
            if isinstance(cond, Unknown):
                if emitting():
                    out += [Tok("id", "__unknown_pp__", t.line), Tok("op", ";", t.line)]
                stack.append([False, True, True])
            else:
                stack.append([cond, cond, False])
        elif word == "elif" and stack:
            top = stack[-1]
            cond = _pp_condition(rest)
            if top[2] or isinstance(cond, Unknown):
                top[0], top[2] = False, True
            else:
                top[0] = not top[1] and cond
                top[1] = top[1] or cond
        elif word == "else" and stack:
            top = stack[-1]
            top[0] = not top[1] and not top[2]
            top[1] = True
        elif word == "endif" and stack:
            stack.pop()
        # #define, #include, #pragma...: nothing to do
    return out


# -- parsing ------------------------------------------------------------------------------

# Expression AST: ("num", v) ("id", name) ("str", s) ("un", op, e) ("bin", op, a, b)
# ("tern", c, a, b) ("call", f, [args]) ("mem", e, field) ("idx", e, i)
# ("cast", e) ("lambda", params, body) ("unknown", why)
# Statements: ("block", [s]) ("if", c, then, else) ("switch", e, [s]) ("case", e)
# ("default",) ("ret", e) ("break",) ("decl", name, e) ("assign", name, e)
# ("expr", e) ("unknown", why); each statement also keeps its first line.

_BINARY = {
    "||": 1,
    "&&": 2,
    "|": 3,
    "^": 4,
    "&": 5,
    "==": 6,
    "!=": 6,
    "<": 7,
    "<=": 7,
    ">": 7,
    ">=": 7,
    "<<": 8,
    ">>": 8,
    "+": 9,
    "-": 9,
    "*": 10,
    "/": 10,
    "%": 10,
}
_TYPE_WORDS = {
    "const",
    "static",
    "enum",
    "struct",
    "unsigned",
    "signed",
    "bool",
    "int",
    "char",
    "float",
    "double",
    "auto",
    "size_t",
    "int8_t",
    "int16_t",
    "int32_t",
    "int64_t",
    "uint8_t",
    "uint16_t",
    "uint32_t",
    "uint64_t",
    "ggml_type",
    "ggml_tensor",
    "ggml_op",
    "constexpr",
    "volatile",
}


class ParseError(Exception):
    pass


class Parser:
    def __init__(self, toks: List[Tok]):
        self.t = toks
        self.i = 0

    def peek(self, k: int = 0) -> Optional[Tok]:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def at(self, text: str, k: int = 0) -> bool:
        p = self.peek(k)
        return p is not None and p.text == text and p.kind in ("op", "id")

    def take(self, text: Optional[str] = None) -> Tok:
        p = self.peek()
        if p is None or (text is not None and p.text != text):
            raise ParseError(f"expected {text!r} at line {p.line if p else 'EOF'}, got {p.text if p else 'EOF'!r}")
        self.i += 1
        return p

    def span_to(self, stops: Tuple[str, ...]) -> int:
        """Index of the next token in `stops` at bracket depth 0."""
        depth, j = 0, self.i
        while j < len(self.t):
            tok = self.t[j]
            if tok.kind == "op":
                if tok.text in ("(", "[", "{"):
                    depth += 1
                elif tok.text in (")", "]", "}"):
                    if depth == 0 and tok.text in stops:
                        return j
                    depth -= 1
                elif depth == 0 and tok.text in stops:
                    return j
            j += 1
        raise ParseError(f"no {stops} after line {self.t[self.i].line if self.i < len(self.t) else 'EOF'}")

    def sub_expr(self, stops: Tuple[str, ...]) -> tuple:
        """The expression up to the next stop token (left there); an
        expression this parser cannot read becomes ("unknown", its text)."""
        end = self.span_to(stops)
        toks = self.t[self.i : end]
        self.i = end
        sub = Parser(toks)
        try:
            e = sub.expr()
            if sub.i == len(toks):
                return e
        except (ParseError, IndexError, ValueError):
            pass
        text = " ".join(t.text for t in toks)
        return ("unknown", f"an expression this parser cannot read: {text[:80]}")

    def skip_balanced(self) -> None:
        """Skips one balanced (...) / {...} / [...] group starting here."""
        pairs = {"(": ")", "{": "}", "[": "]"}
        stack = [pairs[self.take().text]]
        while stack:
            tok = self.take()
            if tok.kind == "op" and tok.text in pairs:
                stack.append(pairs[tok.text])
            elif tok.kind == "op" and tok.text == stack[-1]:
                stack.pop()

    # statements
    def block_items(self, end: str = "}") -> List[tuple]:
        items = []
        while not self.at(end):
            items.append(self.statement())
        return items

    def statement(self) -> tuple:
        p = self.peek()
        line = p.line
        if self.at("{"):
            self.take("{")
            items = self.block_items()
            self.take("}")
            return ("block", items, line)
        if self.at("if"):
            self.take()
            self.take("(")
            cond = self.sub_expr((")",))
            self.take(")")
            then = self.statement()
            other = None
            if self.at("else"):
                self.take()
                other = self.statement()
            return ("if", cond, then, other, line)
        if self.at("switch"):
            self.take()
            self.take("(")
            e = self.sub_expr((")",))
            self.take(")")
            self.take("{")
            items = []
            while not self.at("}"):
                if self.at("case"):
                    self.take()
                    line_c = self.peek().line
                    items.append(("case", self.sub_expr((":",)), line_c))
                    self.take(":")
                elif self.at("default") and self.at(":", 1):
                    self.take()
                    self.take(":")
                    items.append(("default", line))
                else:
                    items.append(self.statement())
            self.take("}")
            return ("switch", e, items, line)
        if self.at("return"):
            self.take()
            e = None if self.at(";") else self.sub_expr((";",))
            self.take(";")
            return ("ret", e, line)
        if self.at("break"):
            self.take()
            self.take(";")
            return ("break", line)
        if self.at(";"):
            self.take()
            return ("block", [], line)
        if p.text in ("for", "while", "do"):
            self.take()
            if p.text == "do":
                self.statement()
                self.take("while")
                self.skip_balanced()
                self.take(";")
            else:
                self.skip_balanced()
                self.statement()
            return ("unknown", f"a {p.text} loop (line {line})", line)
        if p.text == "__unknown_pp__":
            self.take()
            self.take(";")
            return ("unknown", f"code under an unknown preprocessor condition (line {line})", line)
        return self.simple_statement()

    def simple_statement(self) -> tuple:
        """A declaration, an assignment or an expression statement, up to ';'."""
        start = self.i
        end = self.span_to((";",))
        eq = None
        depth = 0
        for j in range(start, end):
            tok = self.t[j]
            if tok.kind == "op" and tok.text in ("(", "[", "{"):
                depth += 1
            elif tok.kind == "op" and tok.text in (")", "]", "}"):
                depth -= 1
            elif tok.kind == "op" and tok.text == "=" and depth == 0:
                eq = j
                break
        line = self.t[start].line
        lhs = self.t[start : eq if eq is not None else end]
        if eq is not None:
            self.i = eq + 1
            value = self.sub_expr((";",))
            self.take(";")
            return ("decl" if len(lhs) > 1 else "assign", lhs[-1].text, value, line)
        if len(lhs) >= 2 and lhs[-1].kind == "id" and all(t.kind == "id" or t.text in ("*", "&", "::") for t in lhs):
            self.i = end + 1
            return ("decl", lhs[-1].text, None, line)
        value = self.sub_expr((";",))
        self.take(";")
        return ("expr", value, line)

    # expressions
    def expr(self) -> tuple:
        cond = self.binary(1)
        if self.at("?"):
            self.take()
            a = self.expr()
            self.take(":")
            b = self.expr()
            return ("tern", cond, a, b)
        return cond

    def binary(self, min_prec: int) -> tuple:
        left = self.unary()
        while True:
            p = self.peek()
            if p is None or p.kind != "op" or p.text not in _BINARY or _BINARY[p.text] < min_prec:
                return left
            self.take()
            right = self.binary(_BINARY[p.text] + 1)
            left = ("bin", p.text, left, right)

    def unary(self) -> tuple:
        p = self.peek()
        if p is not None and p.kind == "op" and p.text in ("!", "-", "~", "*", "&", "+"):
            self.take()
            return ("un", p.text, self.unary())
        if self.at("(") and self._is_cast():
            self.skip_balanced()
            return ("cast", self.unary())
        return self.postfix(self.primary())

    def _is_cast(self) -> bool:
        """( type ) expr: a type word first, a pointer type, or one name
        followed by a name or '(' (`(ggml_metal_device_t)dev->context`)."""
        j = self.i + 1
        toks = []
        while j < len(self.t) and self.t[j].text != ")":
            toks.append(self.t[j])
            j += 1
        if not toks or not all(t.kind == "id" or t.text in ("*", "&", "::") for t in toks):
            return False
        after = self.t[j + 1] if j + 1 < len(self.t) else None
        return (
            toks[0].text in _TYPE_WORDS
            or toks[-1].text == "*"
            or (len(toks) == 1 and after is not None and (after.kind == "id" or after.text == "("))
        )

    def primary(self) -> tuple:
        p = self.take()
        if p.kind == "num":
            s = p.text.rstrip("uUlLfF") if not p.text.lower().startswith("0x") else p.text.rstrip("uUlL")
            try:
                return ("num", int(s, 0))
            except ValueError:
                return ("num", float(s))
        if p.kind == "str":
            return ("str", p.text)
        if p.text == "(":
            e = self.expr()
            self.take(")")
            return e
        if p.text == "[":  # a lambda
            self.i -= 1
            self.skip_balanced()
            params = []
            if self.at("("):
                self.take("(")
                part: List[Tok] = []
                while not self.at(")"):
                    tok = self.take()
                    if tok.text == ",":
                        params.append(part[-1].text)
                        part = []
                    else:
                        part.append(tok)
                if part:
                    params.append(part[-1].text)
                self.take(")")
            while not self.at("{"):  # mutable, -> ret type
                self.take()
            self.take("{")
            body = self.block_items()
            self.take("}")
            return ("lambda", params, body)
        if p.kind == "id":
            name = p.text
            while self.at("::") and self.peek(1) is not None and self.peek(1).kind == "id":
                self.take()
                name += "::" + self.take().text
            if name in ("sizeof",) and self.at("("):
                self.take("(")
                words = []
                while not self.at(")"):
                    words.append(self.take().text)
                self.take(")")
                return ("sizeof", " ".join(words))
            return ("id", name)
        raise ParseError(f"unexpected {p.text!r} at line {p.line}")

    def postfix(self, e: tuple) -> tuple:
        while True:
            if self.at("->") or self.at("."):
                self.take()
                e = ("mem", e, self.take().text)
            elif self.at("["):
                self.take()
                idx = self.expr()
                self.take("]")
                e = ("idx", e, idx)
            elif self.at("("):
                self.take()
                args = []
                while not self.at(")"):
                    args.append(self.expr())
                    if self.at(","):
                        self.take()
                self.take(")")
                e = ("call", e, args)
            elif self.at("++") or self.at("--"):
                self.take()
                e = ("unknown", "increment")
            else:
                return e


@dataclass
class Function:
    name: str
    params: List[str]
    body: List[tuple]
    line: int
    path: str
    text: str  # the source of the whole definition, comments and all


def find_functions(path: str, text: str) -> Dict[str, Function]:
    """Every function definition of a source file whose body parses."""
    toks = preprocess(lex(text))
    out: Dict[str, Function] = {}
    braces: List[bool] = []  # per open brace: whether it opens a scope (not a namespace / extern "C")
    i = 0
    while i < len(toks):
        t = toks[i]
        depth = sum(braces)
        if t.kind == "op" and t.text == "{":
            prev = toks[i - 1] if i else None
            prev2 = toks[i - 2] if i > 1 else None
            before = (prev2.text if prev2 else "", prev.text if prev else "")
            transparent = "namespace" in before or (before[0] == "extern" and prev is not None and prev.kind == "str")
            braces.append(not transparent)
        elif t.kind == "op" and t.text == "}" and braces:
            braces.pop()
        # name ( params ) [const] {  at file scope
        if depth == 0 and t.kind == "id" and i + 1 < len(toks) and toks[i + 1].text == "(":
            p = Parser(toks)
            p.i = i + 1
            try:
                p.skip_balanced()
            except (ParseError, IndexError):
                i += 1
                continue
            close = p.i
            j = close
            while j < len(toks) and toks[j].text in ("const", "noexcept"):
                j += 1
            if j < len(toks) and toks[j].text == "{":
                params = _param_names(toks[i + 2 : close - 1])
                p.i = j + 1
                try:
                    body = p.block_items()
                    p.take("}")
                except (ParseError, IndexError, ValueError, RecursionError):
                    body = None
                if body is not None:
                    start_line, end_line = t.line, toks[p.i - 1].line
                    src = "\n".join(text.splitlines()[start_line - 1 : end_line])
                    out[t.text] = Function(t.text, params, body, start_line, path, src)
                    i = p.i
                    continue
        i += 1
    return out


def _param_names(toks: List[Tok]) -> List[str]:
    names, part = [], []
    for t in toks + [Tok("op", ",", 0)]:
        if t.text == ",":
            ids = [x.text for x in part if x.kind == "id"]
            if ids and ids != ["void"]:
                names.append(ids[-1])
            part = []
        else:
            part.append(t)
    return names


def normalize(code: str) -> str:
    """Source text with comments dropped and whitespace collapsed (for anchors)."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", " ", code, flags=re.S)
    return re.sub(r"\s+", " ", code).strip()


# -- recorded nodes -------------------------------------------------------------------------

_PLAIN_TYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "I16": 2, "I32": 4, "I64": 8}


def type_name(t: str) -> str:
    """ggml_type_name ("q4_K", "f16") -> enum suffix ("Q4_K", "F16")."""
    return t.upper()


@dataclass(frozen=True)
class Node:
    """One recorded graph node (a dict of _native._recorded_ops())."""

    op: str
    sub: str
    type: str
    src: Tuple[str, ...]
    layout: str
    src_layout: Tuple[str, ...]
    params: Tuple[Tuple[str, str], ...]

    @staticmethod
    def of(d: Dict[str, Any]) -> "Node":
        params = tuple(tuple(kv.split("=", 1)) for kv in d["params"].split(",") if kv)
        return Node(d["op"], d["sub"], d["type"], tuple(d["src"]), d["layout"], tuple(d["src_layout"]), params)

    def param(self, key: str) -> Optional[str]:
        return dict(self.params).get(key)

    def label(self) -> str:
        op = f"{self.op}:{self.sub}" if self.sub else self.op
        srcs = ",".join(s or "-" for s in self.src)
        extra = f" [{','.join(f'{k}={v}' for k, v in self.params)}]" if self.params else ""
        return f"{op} {self.type} <- {srcs}{extra}"


# -- the interpreter ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ten:
    node: Node
    index: int  # -1: the node itself (`op`), else its source

    @property
    def type(self) -> str:
        return type_name(self.node.type if self.index < 0 else self.node.src[self.index])

    @property
    def flags(self) -> str:
        return self.node.layout if self.index < 0 else self.node.src_layout[self.index]


@dataclass(frozen=True)
class Typ:
    name: str
    owner: Optional[Ten] = None


@dataclass(frozen=True)
class Sym:
    kind: str
    name: str


@dataclass(frozen=True)
class ElemSize:  # ggml_type_size(t->type) / ggml_element_size(t)
    owner: Optional[Ten]
    value: Optional[int]


@dataclass(frozen=True)
class Nb:
    owner: Ten
    dim: int


@dataclass(frozen=True)
class Dev:  # a device handle or one of its properties: resolved through ASSUMPTIONS
    path: str


@dataclass
class Lambda:
    params: List[str]
    body: List[tuple]
    env: "Env"


class Thunk:
    def __init__(self, expr: tuple, env: "Env"):
        self.expr, self.env, self.done, self.value = expr, env, False, None


class Env:
    def __init__(self, interp: "Interp", parent: Optional["Env"] = None):
        self.vars: Dict[str, Any] = {}
        self.parent = parent
        self.interp = interp

    def lookup(self, name: str) -> Any:
        env: Optional[Env] = self
        while env is not None:
            if name in env.vars:
                v = env.vars[name]
                if isinstance(v, Thunk):
                    if not v.done:
                        v.value, v.done = self.interp.eval(v.expr, v.env), True
                    return v.value
                return v
            env = env.parent
        return _MISSING


_MISSING = object()
_FLAG_FUNCS = {
    "ggml_is_contiguous": "c",
    "ggml_is_contiguous_0": "c",
    "ggml_is_contiguous_1": "1",
    "ggml_is_contiguous_2": "2",
    "ggml_is_contiguous_rows": "r",
    "ggml_vk_dim01_contiguous": "d",
}
_SIZEOF = {"float": 4, "ggml_fp16_t": 2, "int": 4, "int32_t": 4, "int64_t": 8, "uint32_t": 4, "double": 8}


class Interp:
    """Runs parsed C on one recorded node; values are Python values, the
    classes above, or Unknown. `assumed` collects the device properties used."""

    def __init__(self, backend: "Backend", node: Node):
        self.backend = backend
        self.node = node
        self.assumed: set = set()
        self.depth = 0

    # values
    def resolve(self, v: Any) -> Any:
        if isinstance(v, Dev):
            table = ASSUMPTIONS[self.backend.name]
            if v.path in table:
                self.assumed.add(v.path)
                return table[v.path]
            return Unknown(f"device property {v.path}")
        return v

    def truth(self, v: Any) -> Any:
        v = self.resolve(v)
        if isinstance(v, Unknown):
            return v
        if isinstance(v, (Ten, Typ, Sym, Lambda)):
            return True
        if isinstance(v, ElemSize):
            return Unknown("a type size") if v.value is None else bool(v.value)
        if isinstance(v, Nb):
            return Unknown("a stride")
        return bool(v)

    def compare(self, op: str, a: Any, b: Any) -> Any:
        a, b = self.resolve(a), self.resolve(b)
        for x in (a, b):
            if isinstance(x, Unknown):
                return x
        if op in ("==", "!="):
            eq = self._equal(a, b)
            if isinstance(eq, Unknown):
                return eq
            return eq if op == "==" else not eq
        a, b = self._number(a), self._number(b)
        for x in (a, b):
            if isinstance(x, Unknown):
                return x
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    def _equal(self, a: Any, b: Any) -> Any:
        if isinstance(b, Nb):
            a, b = b, a
        if isinstance(a, Nb):
            if a.dim == 0 and isinstance(b, ElemSize) and b.owner == a.owner:
                return "e" in a.owner.flags
            return Unknown("a stride")
        if isinstance(a, Typ) or isinstance(b, Typ):
            if isinstance(a, Typ) and isinstance(b, Typ):
                return a.name == b.name
            return Unknown(f"comparing a type with {a if isinstance(b, Typ) else b}")
        if isinstance(a, Sym) or isinstance(b, Sym):
            return a == b
        if a is None or b is None or isinstance(a, Ten) or isinstance(b, Ten):
            return a is b or a == b
        a, b = self._number(a), self._number(b)
        for x in (a, b):
            if isinstance(x, Unknown):
                return x
        return a == b

    def _number(self, v: Any) -> Any:
        if isinstance(v, ElemSize):
            return Unknown("the size of a quantized type") if v.value is None else v.value
        if isinstance(v, bool) or isinstance(v, (int, float)):
            return v
        return Unknown(f"a number from {v!r}")

    # expressions
    def eval(self, e: tuple, env: Env) -> Any:
        kind = e[0]
        if kind == "num":
            return e[1]
        if kind == "str":
            return e[1]
        if kind == "unknown":
            return Unknown(e[1])
        if kind == "sizeof":
            return _SIZEOF.get(e[1], Unknown(f"sizeof({e[1]})"))
        if kind == "cast":
            return self.eval(e[1], env)
        if kind == "lambda":
            return Lambda(e[1], e[2], env)
        if kind == "id":
            return self.identifier(e[1], env)
        if kind == "tern":
            c = self.truth(self.eval(e[1], env))
            if isinstance(c, Unknown):
                return c
            return self.eval(e[2] if c else e[3], env)
        if kind == "un":
            v = self.eval(e[2], env)
            if e[1] == "!":
                t = self.truth(v)
                return t if isinstance(t, Unknown) else not t
            if e[1] in ("-", "~", "+"):
                n = self._number(self.resolve(v))
                return n if isinstance(n, Unknown) else {"-": -n, "~": ~int(n), "+": n}[e[1]]
            return Unknown(f"unary {e[1]}")
        if kind == "bin":
            return self.binary(e[1], e[2], e[3], env)
        if kind == "mem":
            return self.member(self.eval(e[1], env), e[2])
        if kind == "idx":
            return self.index(self.eval(e[1], env), self.eval(e[2], env))
        if kind == "call":
            return self.call(e[1], e[2], env)
        return Unknown(f"expression {kind}")

    def binary(self, op: str, a_e: tuple, b_e: tuple, env: Env) -> Any:
        if op in ("&&", "||"):
            a = self.truth(self.eval(a_e, env))
            if a is (op == "||"):
                return a
            b = self.truth(self.eval(b_e, env))
            if isinstance(a, Unknown):
                return b if b is (op == "||") else a
            return b
        a, b = self.eval(a_e, env), self.eval(b_e, env)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            return self.compare(op, a, b)
        x, y = self._number(self.resolve(a)), self._number(self.resolve(b))
        for v in (x, y):
            if isinstance(v, Unknown):
                return v
        if op == "/" and y == 0 or op == "%" and y == 0:
            return Unknown("division by zero")
        return {
            "+": lambda: x + y,
            "-": lambda: x - y,
            "*": lambda: x * y,
            "/": lambda: x // y if isinstance(x, int) and isinstance(y, int) else x / y,
            "%": lambda: x % y,
            "<<": lambda: int(x) << int(y),
            ">>": lambda: int(x) >> int(y),
            "&": lambda: int(x) & int(y),
            "|": lambda: int(x) | int(y),
            "^": lambda: int(x) ^ int(y),
        }[op]()

    def identifier(self, name: str, env: Env) -> Any:
        v = env.lookup(name)
        if v is not _MISSING:
            return v
        if name in ("true", "false"):
            return name == "true"
        if name in ("NULL", "nullptr"):
            return None
        m = re.match(r"GGML_(TYPE|OP|UNARY_OP|GLU_OP|PREC)_(\w+)$", name)
        if m:
            return Typ(m.group(2)) if m.group(1) == "TYPE" else Sym(m.group(1), m.group(2))
        if name in ("GGML_MAX_SRC",):
            return 10
        if name == "QK_K":
            return 256
        return Unknown(f"identifier {name}")

    def member(self, v: Any, field_name: str) -> Any:
        if isinstance(v, Unknown):
            return v
        if isinstance(v, Dev):
            return Dev(f"{v.path}{'.' if v.path.endswith('props') else '->'}{field_name}")  # dev->props.x
        if isinstance(v, Ten):
            if field_name == "type":
                return Typ(v.type, v)
            if field_name == "op" and v.index < 0:
                return Sym("OP", v.node.op)
            if field_name == "src" and v.index < 0:
                return ("src", v.node)
            if field_name in ("ne", "nb"):
                return (field_name, v)
            return Unknown(f"tensor field {field_name}")
        if v is None:
            return Unknown(f"->{field_name} of an absent source")
        return Unknown(f"field {field_name} of {v!r}")

    def index(self, v: Any, i: Any) -> Any:
        if isinstance(v, Unknown):
            return v
        if isinstance(i, Unknown):
            return i
        if isinstance(v, tuple) and v[0] == "src":
            node = v[1]
            return Ten(node, i) if i < len(node.src) and node.src[i] else None
        if isinstance(v, tuple) and v[0] == "nb":
            return Nb(v[1], i)
        if isinstance(v, tuple) and v[0] == "ne":
            return self.extent(v[1], i)
        return Unknown(f"indexing {v!r}")

    def extent(self, t: Ten, dim: int) -> Any:
        if dim == 3 and "3" in t.flags:
            return 1
        node = t.node
        if node.op == "FLASH_ATTN_EXT" and dim == 0 and t.index in (0, 1, 2):
            return int(node.param("dv" if t.index == 2 else "dk"))
        return Unknown(f"ne[{dim}] of a tensor (not recorded)")

    def call(self, f: tuple, args: List[tuple], env: Env) -> Any:
        if f[0] != "id":
            return Unknown("an indirect call")
        name = f[1]
        thunks = [Thunk(a, env) for a in args]

        def arg(k: int) -> Any:
            th = thunks[k]
            if not th.done:
                th.value, th.done = self.eval(th.expr, th.env), True
            return th.value

        if name in _FLAG_FUNCS:
            t = arg(0)
            return (
                t
                if isinstance(t, Unknown)
                else (_FLAG_FUNCS[name] in t.flags if isinstance(t, Ten) else Unknown(f"{name} of {t!r}"))
            )
        if name in ("ggml_is_quantized", "ggml_type_size", "ggml_blck_size"):
            t = arg(0)
            if not isinstance(t, Typ):
                return t if isinstance(t, Unknown) else Unknown(f"{name} of {t!r}")
            plain = t.name in _PLAIN_TYPES
            if name == "ggml_is_quantized":
                return not plain
            if name == "ggml_blck_size":
                return 1 if plain else Unknown("the block size of a quantized type")
            return ElemSize(t.owner, _PLAIN_TYPES.get(t.name))
        if name == "ggml_element_size":
            t = arg(0)
            return ElemSize(t, _PLAIN_TYPES.get(t.type)) if isinstance(t, Ten) else Unknown("ggml_element_size")
        if name == "ggml_get_unary_op":
            return Sym("UNARY_OP", self.node.sub)
        if name == "ggml_get_glu_op":
            return Sym("GLU_OP", self.node.sub)
        if name in ("std::min", "std::max", "MIN", "MAX"):
            a, b = self._number(self.resolve(arg(0))), self._number(self.resolve(arg(1)))
            for v in (a, b):
                if isinstance(v, Unknown):
                    return v
            return min(a, b) if name in ("std::min", "MIN") else max(a, b)
        if name in ("GGML_UNUSED", "UNUSED", "GGML_ASSERT"):
            return None
        if name == "ggml_vk_get_device":
            return Dev("device")
        lam = env.lookup(name)
        if isinstance(lam, Lambda):
            return self.invoke(lam.params, lam.body, lam.env, thunks)
        fn = self.backend.helper(name)
        if fn is not None:
            return self.invoke(fn.params, fn.body, Env(self), thunks)
        return Unknown(f"a call of {name}()")

    def invoke(self, params: List[str], body: List[tuple], parent: Env, thunks: List[Thunk]) -> Any:
        if self.depth > 8:
            return Unknown("deep recursion")
        env = Env(self, parent)
        for p, th in zip(params, thunks):
            env.vars[p] = th
        self.depth += 1
        try:
            r = self.run(body, env)
        finally:
            self.depth -= 1
        if isinstance(r, Unknown):
            return r
        if r is not None and r[0] == "ret":
            return r[1]
        return Unknown("a function that ends without return")

    # statements: None (fell through), ("ret", v), ("break",) or Unknown
    def run(self, stmts: Sequence[tuple], env: Env) -> Any:
        for s in stmts:
            r = self.stmt(s, env)
            if r is not None:
                return r
        return None

    def stmt(self, s: tuple, env: Env) -> Any:
        kind = s[0]
        if kind == "block":
            return self.run(s[1], Env(self, env))
        if kind == "ret":
            v = None if s[1] is None else self.eval(s[1], env)
            v = self.resolve(v)
            return v if isinstance(v, Unknown) else ("ret", v)
        if kind == "break":
            return ("break",)
        if kind == "decl":
            env.vars[s[1]] = Thunk(s[2], env) if s[2] is not None else Unknown(f"{s[1]} before assignment")
            return None
        if kind == "assign":
            target = env
            while target is not None and s[1] not in target.vars:
                target = target.parent
            (target or env).vars[s[1]] = self.eval(s[2], env)
            return None
        if kind == "expr":
            e = s[1]
            if e[0] == "call" and e[1][0] == "id" and e[1][1] in ("GGML_UNUSED", "UNUSED", "GGML_ASSERT"):
                return None
            return Unknown(f"a statement with effects this interpreter does not model (line {s[2]})")
        if kind == "if":
            c = self.truth(self.eval(s[1], env))
            if isinstance(c, Unknown):
                return c
            if c:
                return self.stmt(s[2], env)
            return self.stmt(s[3], env) if s[3] is not None else None
        if kind == "switch":
            return self.switch(s, env)
        if kind in ("case", "default"):
            return None
        if kind == "unknown":
            return Unknown(s[1])
        return Unknown(f"statement {kind}")

    def switch(self, s: tuple, env: Env) -> Any:
        v = self.resolve(self.eval(s[1], env))
        if isinstance(v, Unknown):
            return v
        items = s[2]
        start = None
        for k, item in enumerate(items):
            if item[0] == "case":
                eq = self._equal(v, self.eval(item[1], env))
                if eq is True:
                    start = k
                    break
                if isinstance(eq, Unknown):
                    return eq
        if start is None:
            start = next((k for k, item in enumerate(items) if item[0] == "default"), None)
        if start is None:
            return None
        r = self.run(items[start:], Env(self, env))
        if r is not None and not isinstance(r, Unknown) and r[0] == "break":
            return None
        return r


# -- backends -------------------------------------------------------------------------------


@dataclass
class Case:
    """A case group of the top switch as written: the static verdict is
    "yes" (return true), "no" (return false) or "conditional"."""

    labels: Tuple[str, ...]
    verdict: str
    line: int
    sub: Dict[str, "Case"] = field(default_factory=dict)  # UNARY / GLU: per sub-op


@dataclass
class Backend:
    name: str
    path: str
    function: Function
    functions: Dict[str, Function]  # every function of the backend's files, for helpers
    switch: tuple
    preamble: List[tuple]
    cases: Dict[str, Case]  # "MUL_MAT" -> Case; ops not listed take `default`
    default: Case

    def helper(self, name: str) -> Optional[Function]:
        return self.functions.get(name)

    def static(self, op: str, sub: str = "") -> str:
        """yes / no / conditional, as the source reads (for the table)."""
        case = self.cases.get(op, self.default)
        if sub and case.sub:
            return case.sub.get(sub, case.sub.get("default", Case((), "no", case.line))).verdict
        return case.verdict

    def case_line(self, op: str) -> int:
        return self.cases.get(op, self.default).line

    def source_of(self, name: str) -> str:
        fn = self.function if name == self.function.name else self.functions[name]
        return normalize(fn.text)


def _static_verdict(stmts: List[tuple]) -> Tuple[str, Dict[str, Case]]:
    """yes / no / conditional for the statements of a case group; a switch on
    the unary / GLU op is split per sub-op."""
    body = [s for s in stmts if s[0] != "break"]
    while len(body) == 1 and body[0][0] == "block":
        body = [s for s in body[0][1] if s[0] != "break"]
    if not body:
        return "conditional", {}
    first = body[0]
    if first[0] == "ret" and first[1] is not None and first[1][0] == "id" and first[1][1] in ("true", "false"):
        return ("yes" if first[1][1] == "true" else "no"), {}
    if (
        first[0] == "switch"
        and first[1][0] == "call"
        and first[1][1] == ("id", "ggml_get_unary_op")
        or first[0] == "switch"
        and first[1][0] == "call"
        and first[1][1] == ("id", "ggml_get_glu_op")
    ):
        return "conditional", _groups(first[2], r"GGML_(?:UNARY|GLU)_OP_(\w+)")
    return "conditional", {}


def _groups(items: List[tuple], label_re: str) -> Dict[str, Case]:
    """Case groups of a switch body: consecutive labels share the statements after them."""
    out: Dict[str, Case] = {}
    k = 0
    while k < len(items):
        labels, line = [], None
        while k < len(items) and items[k][0] in ("case", "default"):
            it = items[k]
            if it[0] == "default":
                labels.append("default")
                line = line or it[1]
            else:
                m = re.match(label_re, it[1][1]) if it[1][0] == "id" else None
                labels.append(m.group(1) if m else repr(it[1]))
                line = line or it[2]
            k += 1
        stmts = []
        while k < len(items) and items[k][0] not in ("case", "default"):
            stmts.append(items[k])
            k += 1
        if not labels:
            continue
        verdict, sub = _static_verdict(stmts)
        case = Case(tuple(labels), verdict, line or 0, sub)
        for lab in labels:
            out[lab] = case
    return out


def _load_backend(root: Path, name: str) -> Backend:
    main, fname, extra = SOURCES[name]
    functions: Dict[str, Function] = {}
    for rel in (*extra, main):  # the main file's definitions win
        functions.update(find_functions(rel, (root / rel).read_text(errors="replace")))
    if fname not in functions:
        raise RuntimeError(f"{name}: no definition of {fname} in {main}")
    fn = functions[fname]
    body = fn.body
    k = next((k for k, s in enumerate(body) if s[0] == "switch" and s[1] == ("mem", ("id", "op"), "op")), None)
    if k is None:
        raise RuntimeError(f"{name}: {fname} has no `switch (op->op)` at its top level")
    switch = body[k]
    cases = _groups(switch[2], r"GGML_OP_(\w+)")
    default = cases.pop("default", Case(("default",), "no", switch[-1]))
    return Backend(name, main, fn, functions, switch, body[:k], cases, default)


def load_backends(root: Optional[Path] = None) -> Dict[str, Backend]:
    root = root or upstream_source_dir()
    return {name: _load_backend(root, name) for name in SOURCES}


# -- checking -------------------------------------------------------------------------------


@dataclass
class Verdict:
    ok: bool
    how: str  # "source" (the case ran), "rule" (a hand-written rule), "undecided"
    reason: str = ""
    assumed: FrozenSet[str] = frozenset()


@dataclass
class Rule:
    """Decides a (backend, op) the interpreter cannot: check(node) returns
    None when supported, else the reason. anchors: (function, snippet)
    pairs that must be in that function's source (whitespace-normalized)."""

    cites: str
    anchors: Tuple[Tuple[str, str], ...]
    check: Callable[[Node, Backend], Optional[str]]


def _cuda_fattn(node: Node, be: Backend) -> Optional[str]:
    # fattn.cu, ggml_cuda_get_best_fattn_kernel (lines 576-631 at the pin):
    # K head sizes 40..256 need V's equal; 192/320/512/576 need the GQA
    # optimisation (padded KV, 16-byte strides: not recorded) and set GQA
    # ratios, so this rule leaves them undecided. After line 631 every return
    # picks a kernel (VEC, MMA_F16, TILE), none refuses.
    dk, dv = int(node.param("dk")), int(node.param("dv"))
    if dk in (192, 320, 512, 576):
        return f"K head size {dk}: decided by strides and the GQA ratio, which this rule does not check"
    if dk not in (40, 64, 72, 80, 96, 112, 128, 256):
        return f"K head size {dk} has no CUDA flash-attention kernel (40, 64, 72, 80, 96, 112, 128, 256)"
    if dv != dk:
        return f"V head size {dv} differs from K's {dk}"
    # ggml_cuda_fattn_kv_type_supported(K->type) / (V->type): run from the source.
    helper = be.helper("ggml_cuda_fattn_kv_type_supported")
    for role, idx in (("K", 1), ("V", 2)):
        interp = Interp(be, node)
        env = Env(interp)
        env.vars["type"] = Typ(type_name(node.src[idx]))
        r = interp.run(helper.body, env)
        if not (isinstance(r, tuple) and r[0] == "ret" and r[1] is True):
            return f"{role} type {node.src[idx]} is not a CUDA flash-attention KV type"
    if node.param("mask_ne2") not in ("0", "1"):
        return "the mask has ne[2] != 1"
    return None


RULES: Dict[Tuple[str, str], Rule] = {
    ("CUDA", "FLASH_ATTN_EXT"): Rule(
        "ggml/src/ggml-cuda/fattn.cu: ggml_cuda_flash_attn_ext_supported -> ggml_cuda_get_best_fattn_kernel "
        "(head-size switch, KV types, mask ne[2]); every later return picks a kernel, none refuses",
        (
            (
                "ggml_backend_cuda_device_supports_op",
                "case GGML_OP_FLASH_ATTN_EXT: return ggml_cuda_flash_attn_ext_supported(dev_ctx->device, op);",
            ),
            (
                "ggml_cuda_flash_attn_ext_supported",
                "return ggml_cuda_get_best_fattn_kernel(device, dst) != BEST_FATTN_KERNEL_NONE;",
            ),
            (
                "ggml_cuda_get_best_fattn_kernel",
                "switch (K->ne[0]) { case 40: case 64: case 72: case 80: case 96: case 128: case 112: case 256: "
                "if (V->ne[0] != K->ne[0]) { return BEST_FATTN_KERNEL_NONE; } break; case 192:",
            ),
            (
                "ggml_cuda_get_best_fattn_kernel",
                "default: return BEST_FATTN_KERNEL_NONE; } if (!ggml_cuda_fattn_kv_type_supported(K->type) || "
                "!ggml_cuda_fattn_kv_type_supported(V->type)) { return BEST_FATTN_KERNEL_NONE; } "
                "if (mask && mask->ne[2] != 1) { return BEST_FATTN_KERNEL_NONE; }",
            ),
            ("ggml_cuda_get_best_fattn_kernel", "return BEST_FATTN_KERNEL_TILE; }"),
        ),
        _cuda_fattn,
    ),
}


def check_anchors(backends: Dict[str, Backend]) -> List[str]:
    """Anchors of RULES and PREAMBLE_ANCHORS missing from the sources: each
    means upstream changed what a rule or this module's docstring relies on."""
    missing = []
    for (name, op), rule in RULES.items():
        be = backends[name]
        for fn, snippet in rule.anchors:
            if fn not in be.functions or normalize(snippet) not in be.source_of(fn):
                missing.append(f"{name} {op}: {fn} no longer has `{snippet}` (re-read {rule.cites})")
    for name, snippets in PREAMBLE_ANCHORS.items():
        text = backends[name].source_of(backends[name].function.name)
        missing += [
            f"{name} preamble: `{s}` is gone (re-read the start of {SOURCES[name][1]})"
            for s in snippets
            if normalize(s) not in text
        ]
    return missing


def check_node(be: Backend, node: Node) -> Verdict:
    """Whether backend `be` accepts `node` (see the module docstring)."""
    interp = Interp(be, node)
    env = Env(interp)
    env.vars["op"] = Ten(node, -1)
    env.vars["dst"] = Ten(node, -1)
    env.vars["dev"] = Dev("dev")
    for s in be.preamble:  # declarations only, evaluated lazily when a case reads them
        if s[0] == "decl" and s[2] is not None:
            env.vars[s[1]] = Thunk(s[2], env)
    r = interp.switch(be.switch, env)
    assumed = frozenset(interp.assumed)
    if isinstance(r, tuple) and r[0] == "ret":
        ok = interp.truth(r[1])
        if not isinstance(ok, Unknown):
            reason = "" if ok else f"{be.path}:{be.case_line(node.op)} returns false"
            return Verdict(bool(ok), "source", reason, assumed)
        r = ok
    why = r.why if isinstance(r, Unknown) else "the switch ends without a return"
    rule = RULES.get((be.name, node.op))
    if rule is not None:
        reason = rule.check(node, be)
        return Verdict(reason is None, "rule", reason or "", assumed)
    return Verdict(
        False,
        "undecided",
        f"{be.path}:{be.case_line(node.op)} needs {why}; no rule in backend_support.RULES decides it",
    )
