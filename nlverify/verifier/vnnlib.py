"""The VNN-LIB reader behind :func:`nlverify.verifier.spec.parse_vnnlib`: tokenizer, s-expression
reader and the translation of assertions into a :class:`~nlverify.verifier.spec.Spec` (the accepted
grammar is documented in :mod:`nlverify.verifier.spec`)."""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable, Sequence, Union

import numpy as np

from nlverify.verifier.spec import (
    MAX_DNF_CONJUNCTIONS, Conjunction, Region, Spec, SpecError,
)

# --------------------------------------------------------------------------- s-expressions

# One regex over the whole text: parentheses, atoms (an atom may carry a bracketed
# index or shape, spaces allowed inside: ``X[0, 3]``, ``[1, 5]``), comments, and
# any other single non-space character, which the reader reports as unexpected.
# ``findall`` keeps the scan in C; token offsets (for error lines only) are
# recovered on demand by :func:`_token_offset`.
_TOKEN_RE = re.compile(r"[()]|(?:[^\s()\[\];]+|\[[^\[\]()]*\])+|;[^\n]*|\S")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class _List:
    """A parenthesised s-expression: ``items`` are atoms (str) or nested _Lists;
    ``pos`` is the token index of its '(' (atoms report their list's line)."""

    __slots__ = ("pos", "items")

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.items: list = []


# A node as the folds see it: (atom-or-list, token index of the enclosing '(').
_Node = tuple[Union[str, _List], int]


def _token_offset(text: str, token_index: int) -> int:
    """Character offset of the ``token_index``-th token (error path only)."""
    for number, match in enumerate(_TOKEN_RE.finditer(text)):
        if number == token_index:
            return match.start()
    return len(text)


def _read_sexprs(tokens: list[str], fail: Callable[[int, str], SpecError]) -> list[_List]:
    """All top-level s-expressions, read iteratively (no recursion, any depth)."""
    top = _List(pos=0)
    stack = [top]
    current = top.items
    for index, token in enumerate(tokens):
        if token == "(":
            node = _List(index)
            current.append(node)
            stack.append(node)
            current = node.items
        elif token == ")":
            if len(stack) == 1:
                raise fail(index, "unbalanced parentheses: ')' without a matching '('")
            stack.pop()
            current = stack[-1].items
        elif token[0] == ";":
            continue
        elif token in ("[", "]"):
            raise fail(index, f"unexpected {token!r} (unbalanced brackets)")
        elif len(stack) == 1:
            raise fail(index, f"expected '(' at top level, got {token!r}")
        else:
            current.append(token)
    if len(stack) > 1:
        raise fail(stack[-1].pos, "unbalanced parentheses: '(' opened here is never closed")
    return top.items


def _fold(root: _Node, children_of: Callable, leaf: Callable, combine: Callable):
    """Post-order evaluation with an explicit stack. ``children_of(node)`` returns
    the child nodes, or None for a leaf (evaluated by ``leaf(node)``);
    ``combine(node, child_values)`` evaluates an inner node."""
    results: list = []
    stack: list = [(root, None)]
    while stack:
        node, kids = stack.pop()
        if kids is None:
            kids = children_of(node)
            if kids is None:
                results.append(leaf(node))
                continue
            stack.append((node, kids))
            stack.extend((kid, None) for kid in reversed(kids))
        else:
            count = len(kids)
            args = results[len(results) - count:] if count else []
            del results[len(results) - count:]
            results.append(combine(node, args))
    return results.pop()


# --------------------------------------------------------------------------- parser

# Constraint leaves after classification (tuples are cheap; mnist has ~1600):
#   (_LOWER, i, v): x_i >= v        (_UPPER, i, v): x_i <= v
#   (_ROW, ((j, c), ...), d): sum_j c * y_j <= d
_LOWER, _UPPER, _ROW = 0, 1, 2
_COMPARISONS = {"<=", ">=", "<", ">", "=", "=="}
_IGNORED_COMMANDS = {"check-sat", "get-model", "exit", "set-logic", "set-info", "set-option"}
_FLAT_NAME_RE = re.compile(r"([XY])_(\d+)")

# A linear form: ({variable key: coefficient}, constant). Keys: ("X", i) or ("Y", j).
_Linear = tuple[dict, float]


class VnnlibParser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.declared: dict[str, tuple[str, int]] = {}  # name -> ("X"|"Y", flat index)
        self.declared_at: dict[tuple[str, int], int] = {}  # (kind, index) -> offset
        self.tensor_names: dict[str, tuple[str, tuple[int, ...]]] = {}  # 2.0: name -> (kind, shape)
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.assertions: list[_Node] = []

    # ---- errors
    def line_of(self, token_index: int) -> int:
        offset = _token_offset(self.text, token_index)
        return self.text.count("\n", 0, offset) + 1

    def error(self, pos: int, message: str) -> SpecError:
        return SpecError(f"{self.source}:{self.line_of(pos)}: {message}")

    # ---- top level
    def parse(self) -> Spec:
        self.tokens = _TOKEN_RE.findall(self.text)
        for command in _read_sexprs(self.tokens, self.error):
            self.command(command)
        num_inputs = self.count_declared("X")
        num_outputs = self.count_declared("Y")
        conjunctions = self.and_dnf([self.formula_dnf(node) for node in self.assertions], 0)
        regions = self.group_regions(conjunctions, num_inputs, num_outputs)
        return Spec(num_inputs, num_outputs, regions, self.source, self.input_shape, self.output_shape)

    def command(self, node: _List) -> None:
        if not node.items or not isinstance(node.items[0], str):
            raise self.error(node.pos, "expected a command such as (declare-const ...) or (assert ...)")
        head, args = node.items[0], node.items[1:]
        if head == "declare-const":
            self.declare_const(node, args)
        elif head == "assert":
            if len(args) != 1:
                raise self.error(node.pos, f"expected (assert FORMULA) with one formula, got {len(args)}")
            self.assertions.append(_children(node)[0])
        elif head == "vnnlib-version":
            if len(args) != 1 or args[0] not in ("<2.0>", "2.0", "<1.0>", "1.0"):
                raise self.error(node.pos, "expected (vnnlib-version <2.0>); only versions 1.0 and 2.0 are supported")
        elif head == "declare-network":
            self.declare_network(node)
        elif head not in _IGNORED_COMMANDS:
            raise self.error(node.pos, f"unsupported command {head!r}; expected declare-const, assert or declare-network")

    def declare_const(self, node: _List, args: list) -> None:
        if len(args) != 2 or not all(isinstance(a, str) for a in args):
            raise self.error(node.pos, "expected (declare-const NAME Real)")
        name, sort = args
        match = _FLAT_NAME_RE.fullmatch(name)
        if match is None:
            raise self.error(node.pos, f"unknown variable {name!r}: expected X_<i> for inputs or Y_<j> for outputs")
        if sort.lower() != "real":
            raise self.error(node.pos, f"unsupported sort {sort!r} for {name}; expected Real")
        if self.tensor_names:
            raise self.error(node.pos, "cannot mix declare-const with VNN-LIB 2.0 declare-network")
        self.add_variable(name, match.group(1), int(match.group(2)), node.pos)

    def add_variable(self, name: str, kind: str, index: int, pos: int) -> None:
        if name in self.declared:
            raise self.error(pos, f"variable {name} declared twice")
        self.declared[name] = (kind, index)
        self.declared_at[(kind, index)] = pos

    def declare_network(self, node: _List) -> None:
        """VNN-LIB 2.0: ``(declare-network N (declare-input X T [..]) (declare-output Y T [..]))``."""
        if self.declared:
            raise self.error(node.pos, "only one declare-network is supported, and it cannot be mixed with declare-const")
        items = node.items
        if len(items) < 2 or not isinstance(items[1], str):
            raise self.error(node.pos, "expected (declare-network NAME (declare-input ...) (declare-output ...))")
        for item, pos in _children(node)[1:]:
            if not isinstance(item, _List) or not item.items or item.items[0] not in ("declare-input", "declare-output"):
                raise self.error(pos, "unsupported in declare-network: only one declare-input and one declare-output are supported")
            self.declare_tensor(item)
        kinds = sorted(kind for kind, _ in self.tensor_names.values())
        if kinds != ["X", "Y"]:
            raise self.error(node.pos, "declare-network must declare exactly one input and one output tensor")

    def declare_tensor(self, node: _List) -> None:
        items = node.items
        if len(items) != 4 or not all(isinstance(a, str) for a in items):
            raise self.error(node.pos, f"expected ({items[0]} NAME TYPE [d1,...])")
        _, name, _element_type, shape_text = items
        kind = "X" if items[0] == "declare-input" else "Y"
        if any(k == kind for k, _ in self.tensor_names.values()):
            raise self.error(node.pos, f"only one {items[0]} is supported")
        if name in self.tensor_names:
            raise self.error(node.pos, f"variable {name} declared twice")
        shape = self.parse_index_list(shape_text, node.pos, "shape")
        self.tensor_names[name] = (kind, shape)
        if kind == "X":
            self.input_shape = shape
        else:
            self.output_shape = shape
        for flat in range(math.prod(shape)):
            self.declared_at[(kind, flat)] = node.pos

    def parse_index_list(self, text: str, pos: int, what: str) -> tuple[int, ...]:
        if not (text.startswith("[") and text.endswith("]")):
            raise self.error(pos, f"expected a bracketed {what} such as [1, 5], got {text!r}")
        inner = text[1:-1].strip()
        parts = [p.strip() for p in inner.split(",")] if inner else []
        if not all(p.isdigit() for p in parts):
            raise self.error(pos, f"expected non-negative integers in {what} {text!r}")
        return tuple(int(p) for p in parts)

    def count_declared(self, kind: str) -> int:
        indices = sorted(index for k, index in self.declared_at if k == kind)
        if kind == "X" and not indices:
            raise self.error(len(self.tokens), "no input variables declared: expected (declare-const X_0 Real) ...")
        for expected, index in enumerate(indices):
            if index != expected:
                raise self.error(self.declared_at[(kind, index)],
                                 f"{kind}_{expected} is not declared: {kind} indices must be 0..n-1 without gaps")
        return len(indices)

    # ---- variables and terms
    def variable(self, token: str, pos: int) -> tuple[str, int]:
        found = self.declared.get(token)
        if found is not None:
            return found
        bracket = token.find("[")
        if bracket > 0 and token[:bracket] in self.tensor_names:
            kind, shape = self.tensor_names[token[:bracket]]
            index = self.parse_index_list(token[bracket:], pos, "index")
            if len(index) != len(shape) or any(i >= n for i, n in zip(index, shape)):
                raise self.error(pos, f"index {token} out of range for shape {list(shape)}")
            flat = int(np.ravel_multi_index(index, shape)) if shape else 0
            self.declared[token] = (kind, flat)  # cache for the next occurrence
            return kind, flat
        if _FLAT_NAME_RE.fullmatch(token) or bracket > 0:
            raise self.error(pos, f"undeclared variable {token}")
        raise self.error(pos, f"unknown symbol {token!r}: expected a number or a declared variable")

    def atom_linear(self, node: _Node) -> _Linear:
        token, pos = node
        if _NUMBER_RE.fullmatch(token):
            return {}, float(token)
        if token[0] in "+-.0123456789" and not _FLAT_NAME_RE.fullmatch(token):
            raise self.error(pos, f"non-numeric constant {token!r}: expected a number")
        return {self.variable(token, pos): 1.0}, 0.0

    def term_linear(self, node: _Node) -> _Linear:
        if isinstance(node[0], str):
            return self.atom_linear(node)
        return _fold(node, self.term_children, self.atom_linear, self.combine_term)

    def term_children(self, node: _Node):
        expr, pos = node
        if isinstance(expr, str):
            return None
        if not expr.items or expr.items[0] not in ("+", "-", "*", "/"):
            head = expr.items[0] if expr.items and isinstance(expr.items[0], str) else "(...)"
            raise self.error(pos, f"unsupported operator {head!r} in a term: expected +, -, * or / (linear terms only)")
        if len(expr.items) < 2:
            raise self.error(pos, f"operator {expr.items[0]!r} needs at least one argument")
        return _children(expr)

    def combine_term(self, node: _Node, args: list[_Linear]) -> _Linear:
        expr, pos = node
        op = expr.items[0]
        if op == "+" or (op == "-" and len(args) == 1):
            sign = -1.0 if op == "-" else 1.0
            return _linear_sum([(sign, a) for a in args])
        if op == "-":
            return _linear_sum([(1.0, args[0])] + [(-1.0, a) for a in args[1:]])
        if op == "/":
            if len(args) != 2 or args[1][0] or args[1][1] == 0.0:
                raise self.error(pos, "division must be by a non-zero constant: (/ term c)")
            return _linear_sum([(1.0 / args[1][1], args[0])])
        # op == "*": all factors but (at most) one must be constants.
        variable_factors = [a for a in args if a[0]]
        if len(variable_factors) > 1:
            raise self.error(pos, "non-linear product: (* ...) may contain at most one non-constant factor")
        scale = math.prod(a[1] for a in args if not a[0])
        if not variable_factors:
            return {}, scale
        return _linear_sum([(scale, variable_factors[0])])

    # ---- formulas to DNF: a list of conjunctions, each a list of constraint leaves
    def formula_dnf(self, node: _Node) -> list[list[tuple]]:
        expr = node[0]
        if isinstance(expr, _List) and expr.items and expr.items[0] in _COMPARISONS:
            return self.comparison_dnf(node)  # the common case: skip the fold machinery
        return _fold(node, self.formula_children, self.comparison_dnf, self.combine_formula)

    def formula_children(self, node: _Node):
        expr, pos = node
        if isinstance(expr, str):
            return None
        head = expr.items[0] if expr.items else None
        if head in ("and", "or"):
            return _children(expr)
        if head in _COMPARISONS:
            return None
        shown = head if isinstance(head, str) else "(...)"
        raise self.error(pos, f"unsupported operator {shown!r} in a formula: expected and, or, <=, >=, <, >, =")

    def combine_formula(self, node: _Node, args: list) -> list[list[tuple]]:
        if node[0].items[0] == "or":
            result = [conj for dnf in args for conj in dnf]
            self.check_size(len(result), node[1])
            return result
        return self.and_dnf(args, node[1])

    def and_dnf(self, dnfs: list[list[list[tuple]]], pos: int) -> list[list[tuple]]:
        """Distribute AND over the children's disjunctions. Children with a single
        conjunction (plain bounds, the common case) are merged once instead of
        being copied into every product term."""
        common: list[tuple] = []
        branching = []
        for dnf in dnfs:
            if not dnf:
                return []  # a false conjunct
            if len(dnf) == 1:
                common.extend(dnf[0])
            else:
                branching.append(dnf)
        result = [common]
        for dnf in branching:
            self.check_size(len(result) * len(dnf), pos)
            result = [left + right for left in result for right in dnf]
        return result

    def check_size(self, count: int, pos: int) -> None:
        if count > MAX_DNF_CONJUNCTIONS:
            raise self.error(pos, f"formula expands to more than {MAX_DNF_CONJUNCTIONS} conjunctions in disjunctive normal form")

    def comparison_dnf(self, node: _Node) -> list[list[tuple]]:
        expr, pos = node
        if isinstance(expr, str):
            if expr == "true":
                return [[]]
            if expr == "false":
                return []
            raise self.error(pos, f"expected a formula such as (<= Y_0 Y_1), got {expr!r}")
        op = expr.items[0]
        bound = self.variable_bound(expr)
        if bound is not None:
            return [[bound]]
        if len(expr.items) < 3:
            raise self.error(pos, f"comparison {op!r} needs at least two arguments")
        terms = [self.term_linear(t) for t in _children(expr)]
        leaves: list[tuple] = []
        for left, right in zip(terms, terms[1:]):
            difference = _linear_sum([(1.0, left), (-1.0, right)])  # left - right
            if op in ("<=", "<", "=", "=="):
                if self.add_leaf(leaves, difference, pos) is False:
                    return []
            if op in (">=", ">", "=", "=="):
                if self.add_leaf(leaves, _linear_sum([(-1.0, difference)]), pos) is False:
                    return []
        return [leaves]

    def variable_bound(self, expr: _List) -> tuple | None:
        """Fast path for ``(op VAR NUMBER)``, which makes up nearly all of a large
        file; None when ``expr`` has another shape (the general path handles it)."""
        items = expr.items
        if len(items) != 3 or items[0] not in ("<=", ">=", "<", ">"):
            return None
        name, number = items[1], items[2]
        if not isinstance(name, str) or not isinstance(number, str) or not _NUMBER_RE.fullmatch(number):
            return None
        variable = self.declared.get(name)
        if variable is None:
            return None
        kind, index = variable
        value = float(number)
        is_upper = items[0] in ("<=", "<")
        if kind == "X":
            return (_UPPER if is_upper else _LOWER, index, value)
        return (_ROW, ((index, 1.0 if is_upper else -1.0),), value if is_upper else -value)

    def add_leaf(self, leaves: list[tuple], form: _Linear, pos: int) -> bool | None:
        """Classify ``form <= 0`` and append it; return False if it is a false constant."""
        coefficients, constant = form
        terms = [(key, c) for key, c in coefficients.items() if c != 0.0]
        inputs = [(key, c) for key, c in terms if key[0] == "X"]
        if not terms:
            return False if constant > 0.0 else None
        if inputs and len(inputs) != len(terms):
            raise self.error(pos, "unsupported: constraint mixes input (X) and output (Y) variables")
        if len(inputs) > 1:
            names = ", ".join(f"X_{key[1]}" for key, _ in inputs)
            raise self.error(pos, f"unsupported: constraint relates several inputs ({names}); input sets must be boxes")
        if inputs:
            (_, index), coefficient = inputs[0]
            bound = -constant / coefficient
            leaves.append((_UPPER if coefficient > 0 else _LOWER, index, bound))
        else:
            leaves.append((_ROW, tuple((key[1], c) for key, c in terms), -constant))
        return None

    # ---- conjunctions to regions
    def group_regions(self, conjunctions: list[list[tuple]], num_inputs: int, num_outputs: int) -> list[Region]:
        """One Region per distinct input box, in order of first appearance.
        Conjunctions whose box is empty (lower > upper) can never be met and are dropped."""
        grouped: dict[bytes, Region] = {}
        for number, leaves in enumerate(conjunctions):
            lower = [-math.inf] * num_inputs
            upper = [math.inf] * num_inputs
            rows: list[tuple] = []
            for leaf in leaves:
                kind = leaf[0]
                if kind == _UPPER:
                    i = leaf[1]
                    if leaf[2] < upper[i]:
                        upper[i] = leaf[2]
                elif kind == _LOWER:
                    i = leaf[1]
                    if leaf[2] > lower[i]:
                        lower[i] = leaf[2]
                else:
                    rows.append(leaf)
            lower_array = np.array(lower, dtype=np.float64)
            upper_array = np.array(upper, dtype=np.float64)
            if not (np.isfinite(lower_array).all() and np.isfinite(upper_array).all()):
                self.report_unbounded(lower, upper, number, len(conjunctions))
            if np.any(lower_array > upper_array):
                continue
            key = lower_array.tobytes() + upper_array.tobytes()
            region = grouped.get(key)
            if region is None:
                region = grouped[key] = Region(lower_array, upper_array, [])
            region.disjuncts.append(_conjunction_from_rows(rows, num_outputs))
        return list(grouped.values())

    def report_unbounded(self, lower: list[float], upper: list[float], number: int, total: int) -> None:
        for bounds, side in ((lower, "lower"), (upper, "upper")):
            for index, value in enumerate(bounds):
                if not math.isfinite(value):
                    where = f" in disjunct {number + 1} of {total}" if total > 1 else ""
                    raise self.error(self.declared_at[("X", index)],
                                     f"missing {side} bound on X_{index}{where} (declared here): every input needs finite bounds")


def _children(expr: _List) -> list[_Node]:
    """The arguments of ``expr`` (all items but the head) as nodes."""
    return [(item, item.pos if isinstance(item, _List) else expr.pos) for item in expr.items[1:]]


def _linear_sum(scaled: Iterable[tuple[float, _Linear]]) -> _Linear:
    coefficients: dict = {}
    constant = 0.0
    for scale, (coefs, const) in scaled:
        constant += scale * const
        for key, value in coefs.items():
            coefficients[key] = coefficients.get(key, 0.0) + scale * value
    return coefficients, constant


def _conjunction_from_rows(rows: Sequence[tuple], num_outputs: int) -> Conjunction:
    C = np.zeros((len(rows), num_outputs), dtype=np.float64)
    d = np.empty(len(rows), dtype=np.float64)
    for r, (_, terms, rhs) in enumerate(rows):
        for j, coefficient in terms:
            C[r, j] += coefficient
        d[r] = rhs + 0.0  # no -0.0 in printed specs
    return Conjunction(C, d)
