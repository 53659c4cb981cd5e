#!/usr/bin/env python3
"""Print lamina's module dependency graph and check its layering.

A module is a top-level folder or file of src/ (`registry`, `format`, `reference`, ...).
Dependencies are read from `use crate::X...`, `crate::X::...` paths (also inside `use` groups
like `use crate::{a, b::c}`) and `$crate::X` in macros, in every .rs file under src/,
comments and string literals excluded. Exits non-zero when

  * the graph between modules has a cycle (each cycle is printed), or
  * a command module (pull, convert, commit, run, cli) is used from anywhere but cli/ and
    main.rs, or
  * a source file under src/ or bench/ has more than MAX_LINES lines before its
    `#[cfg(test)]` module (small files, one concept each).

Usage: scripts/check-layers.py [--dot] [SRC_DIR]
"""
import os
import re
import sys

COMMANDS = {"pull", "convert", "commit", "run", "cli"}
ALLOWED_COMMAND_USERS = {"cli", "main"}
MAX_LINES = 600


def strip_comments_and_strings(text):
    """Remove // and /* */ comments and the contents of string and char literals."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            out.append('""')
            i = n if j < 0 else j + len(end)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\[^']*|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0)) if m else 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_of(path, src):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def uses_in(text):
    """Top-level module names a file refers to through crate paths."""
    found = set()
    for m in re.finditer(r"\$?crate::(\{[^;]*?\}|[a-z_][a-z0-9_]*)", text, re.S):
        target = m.group(1)
        if target.startswith("{"):
            # `use crate::{a::b, c, d::{e, f}}`: the first segment of each top-level item.
            depth, item, items = 0, "", []
            for ch in target[1:-1]:
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                if ch == "," and depth == 0:
                    items.append(item)
                    item = ""
                else:
                    item += ch
            items.append(item)
            for it in items:
                name = re.match(r"\s*([a-z_][a-z0-9_]*)", it)
                if name:
                    found.add(name.group(1))
        else:
            found.add(target)
    return found


def graph(src):
    modules = set()
    edges = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            mod = module_of(path, src)
            if mod == "lib":
                continue
            modules.add(mod)
            with open(path, encoding="utf-8") as fh:
                text = strip_comments_and_strings(fh.read())
            for dep in uses_in(text):
                if dep != mod:
                    edges.setdefault(mod, set()).add(dep)
    # Macro names exported at the crate root (`#[macro_export]`) are not modules.
    for mod in edges:
        edges[mod] = {d for d in edges[mod] if d in modules}
    return modules, edges


def cycles(modules, edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def layers(modules, edges):
    """Longest-path depth of each module from the modules that depend on nothing."""
    depth = {}

    def d(v, seen=()):
        if v in depth:
            return depth[v]
        if v in seen:
            return 0
        deps = edges.get(v, ())
        depth[v] = 1 + max((d(w, seen + (v,)) for w in deps), default=-1)
        return depth[v]

    for v in modules:
        d(v)
    return depth


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    modules, edges = graph(src)
    if "--dot" in sys.argv:
        print("digraph lamina {")
        for m in sorted(edges):
            for d in sorted(edges[m]):
                print(f'  "{m}" -> "{d}";')
        print("}")
        return 0
    depth = layers(modules, edges)
    print("lamina modules, bottom layer first (module -> what it uses):")
    for level in range(max(depth.values()) + 1):
        names = sorted(m for m in modules if depth[m] == level)
        for m in names:
            deps = ", ".join(sorted(edges.get(m, ()))) or "-"
            print(f"  L{level:<2} {m:<12} -> {deps}")
    failed = False
    for comp in cycles(modules, edges):
        failed = True
        print("CYCLE between modules: " + " <-> ".join(comp), file=sys.stderr)
    for m in sorted(edges):
        for d in sorted(edges[m] & COMMANDS):
            if m not in ALLOWED_COMMAND_USERS:
                failed = True
                print(f"COMMAND MODULE USED: {m} uses {d} (commands are used only from cli/ and main.rs)", file=sys.stderr)
    for top in (src, os.path.join(src, "..", "bench")):
        for root, _, files in os.walk(top):
            for f in sorted(files):
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(root, f)
                with open(path, encoding="utf-8") as fh:
                    lines = fh.read().split("\n")
                code = next((i for i, l in enumerate(lines) if l.strip() == "#[cfg(test)]"), len(lines))
                if code > MAX_LINES:
                    failed = True
                    print(f"FILE TOO LONG: {os.path.normpath(path)} has {code} lines before its tests (max {MAX_LINES})", file=sys.stderr)
    print("layers: " + ("FAILED" if failed else f"ok (no cycle; command modules used only by cli/main.rs; files <= {MAX_LINES} lines)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
