#!/usr/bin/env python3
"""Replays the build stage of deploy/Dockerfile without Docker.

This machine (and CI's) has no Docker daemon and cannot pull base images, and hadolint
cannot tell whether a Dockerfile builds. So this takes the stage named `build`, and in a
scratch directory:

1. copies what each `COPY` line names, from the repository, as the image would see it;
2. runs each `RUN` line, in order, with `sh -c` in the stage's `WORKDIR`, with the local
   toolchain and the repository's target directory (CARGO_TARGET_DIR), so the
   dependencies are already built and the replay costs little.

`cargo … --release` runs in the dev profile here: what is checked is that the stage's
files and steps make a crate that builds (its manifest, its targets, its lockfile), which
the optimisation level does not change. Any step that fails fails the replay, with the
step's line number.

Usage: tools/replay_dockerfile.py [deploy/Dockerfile]
"""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def instructions(path):
    """(line number, keyword, arguments) of each instruction, continuations joined."""
    out, pending, start = [], "", 0
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if not pending:
                start = number
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            text = (pending + line).strip()
            pending = ""
            keyword, _, rest = text.partition(" ")
            out.append((start, keyword.upper(), rest.strip()))
    return out


def build_stage(steps, name):
    """The instructions of the stage `FROM … AS name`, up to the next FROM."""
    stage, inside = [], False
    for number, keyword, rest in steps:
        if keyword == "FROM":
            words = rest.split()
            inside = len(words) >= 3 and words[-2].upper() == "AS" and words[-1] == name
            continue
        if inside:
            stage.append((number, keyword, rest))
    return stage


def copy(sources, dest, workdir):
    target = os.path.join(workdir, dest)
    many = len(sources) > 1 or dest.endswith("/")
    for source in sources:
        src = os.path.join(ROOT, source)
        if not os.path.exists(src):
            raise FileNotFoundError(f"COPY {source}: not in the repository")
        to = os.path.join(target, os.path.basename(source.rstrip("/"))) if many else target
        if os.path.isdir(src):
            shutil.copytree(src, target if not many else to, dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(to) or ".", exist_ok=True)
            shutil.copy2(src, to)


def main():
    dockerfile = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "deploy/Dockerfile")
    stage = build_stage(instructions(dockerfile), "build")
    if not stage:
        sys.exit(f"{dockerfile}: no stage named `build`")
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    with tempfile.TemporaryDirectory(prefix="dockerfile-replay-") as scratch:
        workdir = scratch
        for number, keyword, rest in stage:
            where = f"{os.path.relpath(dockerfile, ROOT)}:{number}"
            if keyword == "WORKDIR":
                workdir = os.path.join(scratch, rest.lstrip("/"))
                os.makedirs(workdir, exist_ok=True)
            elif keyword == "ENV":
                key, _, value = rest.partition("=")
                env[key.strip()] = value.strip()
            elif keyword == "COPY":
                words = [w for w in shlex.split(rest) if not w.startswith("--")]
                try:
                    copy(words[:-1], words[-1], workdir)
                except FileNotFoundError as err:
                    sys.exit(f"{where}: {err}")
            elif keyword == "RUN":
                command = rest.replace(" --release", "")
                print(f"{where}: RUN {command}", flush=True)
                done = subprocess.run(["sh", "-c", command], cwd=workdir, env=env)
                if done.returncode != 0:
                    sys.exit(f"{where}: RUN failed with exit status {done.returncode}")
            else:
                sys.exit(f"{where}: {keyword} is not replayed; teach tools/replay_dockerfile.py")
    print(f"dockerfile build stage: ok ({len(stage)} steps replayed)")


if __name__ == "__main__":
    main()
