#!/usr/bin/env python3
"""Fails when source files of the crate import each other in a circle.

Reads every `crate::`, `super::` and `self::` path in src/ (in `use` lines and in code),
resolves each to the file of the deepest module it names, and looks for strongly
connected files. A module referring to its own submodules (`mod x;`, `pub use x::Y;`) is
how a folder exposes its parts, so edges from a module to its descendants are not
counted; everything else is: a child using its parent's items, siblings, other layers.
Usage: scripts/import-cycles.py [SRC_DIR]   (exit 1 and the cycles when there are any)
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
src = os.path.normpath(src)

modules = {}  # module path tuple -> file
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(root, f), src)
        parts = rel[:-3].split(os.sep)
        if parts in (["lib"], ["main"]):
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        modules.setdefault(tuple(parts), os.path.join(src, rel))


def expand(tree):
    """Paths of a use tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = tree.strip()
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
    if start is None:
        return [tree.split(" as ")[0].strip()]
    prefix = tree[:start]
    inner = tree[start + 1 : tree.rindex("}")]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    out = []
    for it in items:
        if it.strip():
            out += [prefix + p for p in expand(it)]
    return out


def resolve(module, path):
    """The module tuple a `crate::`/`super::`/`self::` path points into."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(module)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    best = tuple(base)
    cur = list(base)
    for s in segs:
        cur.append(s)
        if tuple(cur) in modules:
            best = tuple(cur)
        else:
            break
    return best


edges = {m: set() for m in modules}
use_re = re.compile(r"\buse\s+((?:crate|super|self)::[^;]*);", re.S)
path_re = re.compile(r"\b(?:crate|super|self)(?:::\w+)+")
for module, path in modules.items():
    text = open(path, encoding="utf-8").read()
    # Strip comments so prose naming a path is not an import.
    text = re.sub(r"//[^\n]*", "", text)
    found = []
    for m in use_re.finditer(text):
        found += expand(m.group(1).replace("\n", " "))
    found += path_re.findall(text)
    for p in found:
        target = resolve(module, p)
        if target is None or target == module or target not in modules:
            continue
        if target[: len(module)] == module:
            continue  # a module referring to its own descendants
        edges[module].add(target)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
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
            sccs.append(comp)


sys.setrecursionlimit(10000)
for v in sorted(modules):
    if v not in index:
        visit(v)

name = lambda m: os.path.relpath(modules[m], os.path.dirname(src))
if sccs:
    for comp in sccs:
        print("import cycle:", " <-> ".join(sorted(name(m) for m in comp)))
    sys.exit(1)
print(f"import-cycles: no cycles among {len(modules)} files")
