"""The module's layout: its sections (three-line banners) in dependency
order, each named in the module docstring, and no class past ~600 lines.

A section may use what an earlier section defines, never what a later one
does: at import time, or from inside a function or a method (where Python
would resolve it at call time and no import would fail). The test walks
the module's syntax tree and symbol tables, so it checks names, not text."""

import ast
import os
import re
import symtable

import heartbeat_lite

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_CLASS_LINES = 650  # a class past ~600 lines has more than one job
_BANNER = re.compile(r"^#{20,}\n# (.+)\n#{20,}$", re.MULTILINE)


def _module_source():
    with open(os.path.join(HERE, "heartbeat_lite.py"), encoding="utf-8") as f:
        return f.read()


def sections(source):
    """``[(first line, name)]`` of the module's banners, in order."""
    return [(source.count("\n", 0, match.start()) + 2, match.group(1)) for match in _BANNER.finditer(source)]


def _section_index(banners, line):
    index = -1
    for i, (first, _) in enumerate(banners):
        if first <= line:
            index = i
    return index


def upward_references(source):
    """Every name used in a section but defined (at module level) in a later
    one: ``(section using it, line of the scope using it, name, section
    defining it)``."""
    banners = sections(source)
    tree = ast.parse(source)
    defined = {}  # module-level name -> index of the section that defines it first
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]
        else:
            continue
        for name in names:
            defined.setdefault(name, _section_index(banners, node.lineno))
    found = set()

    def note(index, line, name):
        if name in defined and defined[name] > index:
            found.add((banners[index][1] if index >= 0 else "(head)", line, name, banners[defined[name]][1]))

    # module-level statements, and what a def or a class runs when it is defined
    for node in tree.body:
        index = _section_index(banners, node.lineno)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts = node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d]
        elif isinstance(node, ast.ClassDef):
            parts = node.decorator_list + node.bases + [keyword.value for keyword in node.keywords]
        else:
            parts = [node]
        for part in parts:
            for n in ast.walk(part):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                    note(index, n.lineno, n.id)

    # every name a function, a method or a class body resolves globally
    def walk(table, index):
        for symbol in table.get_symbols():
            if symbol.is_referenced() and symbol.is_global():
                note(index, table.get_lineno(), symbol.get_name())
        for child in table.get_children():
            walk(child, index)

    for child in symtable.symtable(source, "heartbeat_lite.py", "exec").get_children():
        walk(child, _section_index(banners, child.get_lineno()))
    return sorted(found, key=lambda item: item[1])


def test_no_section_uses_what_a_later_section_defines():
    assert upward_references(_module_source()) == []


def test_the_check_finds_a_reference_that_runs_upward():
    banner = "#" * 30 + "\n# {}\n" + "#" * 30 + "\n"
    source = (banner.format("Low") + "A = 1\n\ndef low():\n    return HIGH\n\n"
              + "class Low:\n    def method(self):\n        return [high() for _ in range(A)]\n\n"
              + banner.format("High") + "HIGH = 2\n\ndef high():\n    return low()\n")
    assert [(section, name, later) for section, _, name, later in upward_references(source)] == [
        ("Low", "HIGH", "High"), ("Low", "high", "High")]


def test_the_module_docstring_names_every_section_in_order():
    names = [name for _, name in sections(_module_source())]
    doc = heartbeat_lite.__doc__
    positions = [doc.find(name) for name in names]
    assert -1 not in positions, [name for name, at in zip(names, positions) if at < 0]
    assert positions == sorted(positions), names


def test_no_class_is_past_the_size_of_one_job():
    tree = ast.parse(_module_source())
    sizes = {node.name: node.end_lineno - node.lineno + 1 for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_CLASS_LINES} == {}
