#!/usr/bin/env python3
"""The direction of imports in src/: no two files whose imports form a loop, and at most
MAX_UPWARD imports from a module lower in the flow to a higher one (the order is
ORDER, the layout that src/lib.rs describes). Run by `make lint`; prints the loops and
the upward imports, and exits 1 when there are loops or too many upward imports.

A file's imports are the `crate::…` paths it names outside its `#[cfg(test)] mod tests`
(use lines and paths in the code), each resolved to the file that defines the longest
module prefix; `super::x` is resolved against the file's parent module.
"""
import collections
import os
import re
import sys

# Top to bottom: a module may import those after it.
ORDER = """main check replay redrive lambda app reload config worker health pipeline idempotency source
forward event indexer aws batching concurrency retry internal_events metrics telemetry
outcome redact redis_link allocator lib""".split()
MAX_UPWARD = 2


def modules(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            files["::".join(parts)] = path
    return files


def imports(files):
    known = set(files)

    def resolve(path):
        parts = path.split("::")
        while parts:
            name = "::".join(parts)
            if name in known:
                return name
            parts = parts[:-1]
        return None

    graph = collections.defaultdict(set)
    for module, path in files.items():
        text = open(path, encoding="utf-8").read()
        tests = text.find("#[cfg(test)]\nmod tests")
        if tests >= 0:
            text = text[:tests]
        text = re.sub(r"//[^\n]*", "", text)
        targets = []
        for m in re.finditer(r"crate::([a-z_0-9]+(?:::[a-z_0-9]+)*)(::\{([^;]*?)\})?", text):
            targets.append(m.group(1))
            for item in (m.group(3) or "").split(","):
                item = item.strip().split(" ")[0]
                if item and item[0].islower():
                    targets.append(m.group(1) + "::" + item.split("::{")[0])
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        for m in re.finditer(r"\bsuper::([a-z_0-9]+)", text):
            targets.append(f"{parent}::{m.group(1)}" if parent else m.group(1))
        for target in targets:
            found = resolve(target)
            if found and found != module and not module.startswith(found + "::"):
                graph[module].add(found)
    return graph


def loops(graph, nodes):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    files = modules(root)
    graph = imports(files)
    failed = False
    for component in loops(graph, files):
        failed = True
        print("import loop: " + " <-> ".join(component))
        for a in component:
            for b in sorted(graph[a] & set(component)):
                print(f"  {a} -> {b}")
    top = lambda m: m.split("::")[0]
    upward = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if top(a) not in ORDER or top(b) not in ORDER:
                failed = True
                print(f"not in tools/imports.py's ORDER: {top(a) if top(a) not in ORDER else top(b)}")
            elif ORDER.index(top(a)) > ORDER.index(top(b)):
                upward.append(f"{a} -> {b}")
    for u in upward:
        print(f"upward import: {u}")
    if len(upward) > MAX_UPWARD:
        failed = True
        print(f"{len(upward)} upward imports, at most {MAX_UPWARD}")
    print(f"imports: {sum(len(v) for v in graph.values())} between {len(files)} files, "
          f"{'FAILED' if failed else 'no loop'}, {len(upward)} upward")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
