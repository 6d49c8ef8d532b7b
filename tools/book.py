#!/usr/bin/env python3
"""Checks the book in docs/ (an mdBook) without mdbook: every page SUMMARY.md names
exists, every page of docs/ is in SUMMARY.md, and every relative link in the book and in
README.md resolves to a file (and, with #anchor, to a heading of a markdown page). Run by
`make lint`; prints each problem and exits 1 if there is one."""
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DOCS = os.path.join(ROOT, "docs")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    """mdBook's ids of a page's headings: lower case, spaces to dashes, punctuation out."""
    found, fence = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^#{1,6} (.*)", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1).strip()).lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            found.add(slug)
    return found


def links(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    for m in LINK.finditer(text):
        yield m.group(1) or m.group(2)


def main():
    problems = []
    summary = os.path.join(DOCS, "SUMMARY.md")
    named = set()
    for target in links(summary):
        page = os.path.normpath(os.path.join(DOCS, target))
        named.add(page)
        if not os.path.isfile(page):
            problems.append(f"SUMMARY.md names {target}, which does not exist")
    pages = [os.path.join(d, f) for d, _, fs in os.walk(DOCS) for f in fs if f.endswith(".md")]
    for page in pages:
        if page != summary and os.path.normpath(page) not in named:
            problems.append(f"{os.path.relpath(page, ROOT)} is not in SUMMARY.md")
    for page in pages + [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "DEVELOPERS.md")]:
        for target in links(page):
            if re.match(r"^[a-z]+:", target) or target.startswith("#") and False:
                continue
            path, _, anchor = target.partition("#")
            where = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            rel = os.path.relpath(page, ROOT)
            if not os.path.exists(where):
                problems.append(f"{rel}: link to {target}: no such file")
            elif anchor and where.endswith(".md") and anchor not in anchors(where):
                problems.append(f"{rel}: link to {target}: no such heading")
    for p in problems:
        print(p)
    print(f"book: {len(named)} pages in SUMMARY.md, {'FAILED' if problems else 'every link resolves'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
