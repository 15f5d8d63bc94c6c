"""
Mutation check: would the tests notice a wrong method?

    python tests/mutants.py             # every mutant (about 5 minutes on 2 CPU cores)
    python tests/mutants.py sparse.py   # only the mutants of one file (or: 5 12, numbers as listed)
    python tests/mutants.py --list      # list the mutants without running them

Each mutant is one small, plausible mistake in the method's code, the slip a student or
a refactorer makes: an off-by-one, a missing scale, a swapped ratio, a dropped mask, the wrong
dimension. One at a time, it is written into a temporary copy of the repository (the files git
tracks or would track, so no out/, data/generated/ or .venv) and the test files that import the
mutated module run there, its own tests/test_<module>.py first, stopping at the first failure.
A mutant is caught when a test fails and survives when every test passes; a snippet that is no
longer in the code, or a run that cannot collect its tests, is an error. At the end the tests
that caught mutants run once on the unmutated copy: a test that fails there proves nothing.
The exit status is 0 only when every mutant is caught.

The mutants, and the ones left out as equivalent, are listed in tests/mutants.txt.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from test_structure import imported, project_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANTS_FILE = os.path.join(ROOT, "tests", "mutants.txt")


def read_mutants(path=MUTANTS_FILE):
    """[(file, original code, code with the mistake, the mistake)] from mutants.txt (format at its top)."""
    mutants = []
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            if line[:4] in ("  - ", "  + ") and mutants:
                mutants[-1][2 if line[2] == "-" else 3] = line[4:]
            elif not line.startswith(" ") and ": " in line:
                mutants.append(line.split(": ", 1) + [None, ""])
            else:
                sys.exit(f"error: {path} line {n}: expected 'file: the mistake', '  - code' or '  + code'")
    for file, why, original, _ in mutants:
        if original is None:
            sys.exit(f"error: {path}: the mutant '{file}: {why}' has no '  - original code' line")
    return [(file, original, replacement, why) for file, why, original, replacement in mutants]


def copy_repo(dest):
    """Copy the files git tracks or would track (not what .gitignore names) into dest."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        sys.exit("error: the mutation check copies the files git lists; run it in a git checkout")
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, name)):           # a tracked file deleted in the work tree is skipped
            os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))


def covering_tests(module):
    """The test files that import module (anywhere in them), its own test_<module>.py first."""
    known = set(project_modules())
    name = module[:-3].replace("/", ".")
    found = []
    for f in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if f.startswith("test_") and f.endswith(".py"):
            with open(os.path.join(ROOT, "tests", f), "r", encoding="utf-8") as src:
                if name in imported(src.read(), known):
                    found.append(f"tests/{f}")
    own = f"tests/test_{os.path.basename(module)}"
    return sorted(found, key=lambda f: f != own)


def pytest(root, args, timeout):
    """(exit status, output) of pytest in root; status None when it ran past timeout seconds."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",     # no stale .pyc of a file rewritten within a second
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}              # the suite needs no plugin; loading them costs seconds
    try:
        p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return p.returncode, p.stdout + p.stderr


def first_failure(output):
    """The node id of the first test pytest's summary lists as failed (or as an error in its
    fixtures); None when no test failed, as when the test files could not be collected."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")) and "::" in line:
            return line.split(" ", 1)[1].split(" - ")[0]
    return None


def run_mutant(root, file, original, replacement, timeout):
    """(verdict, the test that caught it or a reason) for one mutant, the file restored after."""
    path = os.path.join(root, file)
    with open(path, "r", encoding="utf-8") as f:
        source = f.read()
    if source.count(original) != 1:
        return "error", f"the snippet occurs {source.count(original)} times in {file} (code changed? update the mutant)"
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source.replace(original, replacement))
        status, output = pytest(root, ["-x", *covering_tests(file)], timeout)
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
    if status is None:
        return "error", f"the tests ran past {timeout} s"
    if status == 0:
        return "survived", ""
    if status == 1 and first_failure(output):
        return "caught", first_failure(output)
    return "error", f"pytest exited with {status}: " + (output.strip().splitlines() or [""])[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("only", nargs="*", help="run only these mutants: numbers (as --list numbers them) or file names")
    p.add_argument("--list", action="store_true", help="list the mutants and the tests each would run, then stop")
    p.add_argument("--timeout", type=int, default=300, help="seconds one mutant's tests may take (default 300)")
    args = p.parse_args(argv)
    mutants = read_mutants()
    numbers = {str(n): n for n in range(1, len(mutants) + 1)}
    bad = [a for a in args.only if a not in numbers and a not in {m[0] for m in mutants}]
    if bad:
        sys.exit(f"error: no mutant {bad[0]}: give numbers 1 to {len(mutants)} or the names of mutated files")
    chosen = [n for n, m in enumerate(mutants, 1) if not args.only or str(n) in args.only or m[0] in args.only]
    if args.list:
        for n in chosen:
            file, _, _, why = mutants[n - 1]
            print(f"{n:2d} {file}: {why}  [{' '.join(covering_tests(file))}]")
        return

    t0 = time.time()
    tally, catchers = {"caught": 0, "survived": 0, "error": 0}, set()
    with tempfile.TemporaryDirectory(prefix="mutants-") as root:
        copy_repo(root)
        for n in chosen:
            file, original, replacement, why = mutants[n - 1]
            t = time.time()
            verdict, detail = run_mutant(root, file, original, replacement, args.timeout)
            tally[verdict] += 1
            if verdict == "caught":
                catchers.add(detail)
            print(f"{n:2d} {verdict:<8} {time.time() - t:5.1f}s  {file}: {why}" + (f"  [{detail}]" if detail else ""),
                  flush=True)
        if catchers:                                         # the catches count only if these pass unmutated
            status, output = pytest(root, sorted(catchers), args.timeout)
            if status != 0:
                tally["error"] += 1
                print(f"error: the tests that caught mutants do not all pass on the unmutated code:\n{output}")
    print(f"{tally['caught']} caught, {tally['survived']} survived, {tally['error']} errors "
          f"of {len(chosen)} mutants in {time.time() - t0:.0f}s")
    sys.exit(0 if tally["caught"] == len(chosen) and not tally["error"] else 1)


if __name__ == "__main__":
    main()
