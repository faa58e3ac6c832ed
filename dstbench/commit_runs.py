"""Run a suite from another commit of this checkout, as asv's ``continuous`` does, so that two commits are
measured in the same window of the machine.

``run_at_commit`` exports the commit's tracked files (``git archive``),
installs them into a private folder (``pip install --target``, without
dependencies: this environment's are used), and runs ``python -m dstbench run``
from there in a subprocess whose output goes to stderr. The commit's CPU
kernels are compiled into the usual kernel cache; their sources hash apart
from this checkout's, so neither build replaces the other.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Sequence

from dstbench.env import REPO_ROOT
from dstbench.errors import UserError
from dstbench.runs import Run

_TAIL_CHARS = 600
#: folders of a commit that running its suites does not need
_NOT_EXPORTED = ("results", "reports")


def commit_of(run: Run) -> str:
    """The git commit a run's code came from.

    Raises:
        UserError: when the run records none, or records uncommitted edits (its code is in no commit).
    """
    sha = run.env.get("git_sha")
    if not sha:
        raise UserError(f"{run.path} records no git commit")
    if run.env.get("git_dirty"):
        raise UserError(f"{run.path} was measured with uncommitted edits on {sha[:10]}, so no commit holds its code")
    return str(sha)


def _tail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def export(sha: str, dest: Path, repo: Path = REPO_ROOT) -> Path:
    """The tracked files of commit ``sha`` of ``repo`` (less results/ and reports/) under ``dest``.

    Raises:
        UserError: when ``repo`` is no git checkout or lacks the commit (a shallow clone).
    """
    pathspec = ["--", ".", *(f":(exclude){name}" for name in _NOT_EXPORTED)]
    try:
        done = subprocess.run(["git", "archive", "--format=tar", sha, *pathspec], cwd=repo, capture_output=True,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"git archive {sha[:10]} failed ({exc}); install git or run from a git checkout") from None
    if done.returncode != 0:
        raise UserError(f"commit {sha[:10]} is not in {repo} ({_tail(done.stderr.decode(errors='replace'))}); "
                        "fetch the whole history (git fetch --unshallow) to measure it")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        # git's own archive of its own commit; the "data" filter where this Python has it (3.10.12+, 3.11.4+)
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


def _isolation_flags() -> list[str]:
    """Build with this environment's setuptools where it is recent enough, else in pip's isolated build."""
    try:
        major = int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return []
    return ["--no-build-isolation"] if major >= 69 else []


def install(tree: Path, target: Path) -> None:
    """``pip install --target`` of the package in ``tree``, without its dependencies.

    Raises:
        UserError: with the end of pip's output, when it fails.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-warn-script-location",
           *_isolation_flags(), "--target", str(target), str(tree)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(f"installing {tree} failed: {_tail(done.stderr or done.stdout)}")


def run_at_commit(sha: str, suite: str, suite_args: Sequence[str], out: Path) -> Path:
    """Run ``dstbench run --suite SUITE SUITE_ARGS --out OUT`` with the code of commit ``sha``; returns ``out``.

    Raises:
        UserError: when the commit cannot be exported or installed, or its run fails.
    """
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix=f"dstbench-{sha[:10]}-") as tmp:
        tree, target = export(sha, Path(tmp) / "tree"), Path(tmp) / "site"
        install(tree, target)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "dstbench", "run", "--suite", suite, *suite_args, "--out", str(out)]
        # cwd: the temporary folder, so that no checkout's dstbench/ folder shadows the installed commit
        with subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                sys.stderr.write(line)
    if proc.returncode != 0:
        raise UserError(f"the {suite} suite of commit {sha[:10]} failed (exit {proc.returncode}); see the messages "
                        "above")
    return out
