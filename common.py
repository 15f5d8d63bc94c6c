"""
What every script shares, at the bottom of the import order (it imports no project module):
the command line built from a config dataclass, the device, glibc's memory setting, the
one atomic file writer every output goes through (checkpoints, the prepared corpus, results),
and the one line a script ends with on Ctrl-C (interruptible).

Checkpoints are saved and loaded beside the model they rebuild (model.py); a prepared
corpus is written and read in data/prepare.py.
"""

import argparse
import ctypes
import errno
import functools
import inspect
import json
import math
import os
import re
import stat
import sys
import tempfile
from dataclasses import fields

import torch

# The project folder: default paths (out/, data/) are resolved in it, not in the working directory.
ROOT = os.path.dirname(os.path.abspath(__file__))


def config_parser(description, *dataclasses, skip=(), presets=None):
    """argparse over the fields of the given dataclasses; each option's help is the comment
    beside its default in the dataclass's source, and a dataclass with a docstring of its own gets
    its options grouped under it. presets: {option: {name: {field: value}}}, each
    offered as --option NAME (the first name is the default), whose help lists the options each
    name changes (parse_args applies it)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for dc in dataclasses:
        comments = field_comments(dc)
        own_doc = dc.__doc__ and not dc.__doc__.startswith(dc.__name__ + "(")   # not the one dataclass writes
        group = p.add_argument_group(dc.__doc__.strip()) if own_doc else p
        for f in fields(dc):
            if f.name in skip:
                continue
            name, text = "--" + f.name.replace("_", "-"), comments.get(f.name, "").replace("%", "%%")
            if isinstance(f.default, bool):
                group.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=f"{text} (default: {f.default})")
            elif isinstance(f.default, tuple):
                group.add_argument(name, type=lambda s: tuple(int(i) for i in s.split(",") if i.strip()),
                               default=f.default, help=f"{text}; comma-separated, e.g. 1,3 "
                               f"(default: {','.join(map(str, f.default))})")
            else:
                group.add_argument(name, type=type(f.default), default=f.default, help=f"{text} (default: {f.default})")
    for option, named in (presets or {}).items():
        changes = " ".join(f"{k}: {'; '.join(preset_changes(p, v)) or 'nothing'}." for k, v in named.items())
        p.add_argument(f"--{option}", choices=list(named), default=next(iter(named)), help="a named set of settings "
                       "(what each changes is listed here); an option given on the command line still wins. "
                       + changes.replace("%", "%%"))
    return p


def field_comments(dc):
    """Each field's comment in the source of dataclass dc: the text after # on its line, and on
    the lines of comment alone right below it."""
    comments, name = {}, None
    for line in inspect.getsource(dc).splitlines():
        field = re.match(r"\s+(\w+): .*?#\s*(.*)$", line)
        more = re.match(r"\s+#\s*(.*)$", line)
        if field:
            name = field.group(1)
            comments[name] = field.group(2)
        elif more and name:
            comments[name] += " " + more.group(1)
        else:
            name = None
    return comments


def preset_changes(p, preset):
    """The options of parser p that preset sets to another value than p's default, as --name value."""
    def show(k, v):
        name = k.replace("_", "-")
        if isinstance(v, bool):
            return f"--{name}" if v else f"--no-{name}"
        if isinstance(v, tuple):
            v = ",".join(map(str, v)) or '""'
        elif isinstance(v, str) and v.startswith(ROOT + os.sep):
            v = os.path.relpath(v, ROOT)                # a project path, as the user would type it
        return f"--{name} {v:g}" if isinstance(v, float) else f"--{name} {v}"
    defaults = vars(p.parse_args([]))               # config_parser's options: none is required
    return [show(k, v) for k, v in preset.items() if k in defaults and defaults[k] != v]


def parse_args(p, argv=None, presets=None):
    """The options of argv, parsed by p. With --option NAME for each option of presets (config_parser),
    that name's settings become the defaults first, so an option given on the command line still
    wins (argv is read twice: once to find the names, then with their defaults)."""
    chosen = vars(p.parse_known_args(argv)[0])
    for option, named in (presets or {}).items():
        p.set_defaults(**{k: v for k, v in named[chosen[option]].items() if k in chosen})
    return p.parse_args(argv)


def given_options(p, argv, presets=None):
    """The fields argv sets to another value than its presets (or the defaults) would: the options a
    user asked for, which a script refuses to drop silently (a preset's it only notes)."""
    chosen = vars(parse_args(p, argv, presets))
    named = vars(parse_args(p, [a for option in presets or {} for a in (f"--{option}", chosen[option])], presets))
    return {k for k, v in chosen.items() if v != named[k]}


def split(args, dc):
    """The dataclass dc filled from the parsed options that name its fields."""
    return dc(**{f.name: getattr(args, f.name) for f in fields(dc) if hasattr(args, f.name)})


def check_range(cfg, positive=(), not_negative=()):
    """ValueError naming the first of these options that is not a finite number above 0
    (positive) or at least 0 (not_negative): an inf or nan learning rate would otherwise only
    show up as a diverged run."""
    for name in positive + not_negative:
        value = getattr(cfg, name)
        if not (math.isfinite(value) and (value > 0 if name in positive else value >= 0)):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number "
                             f"{'above 0' if name in positive else '0 or more'}, not {value:g}")


class Diverged(RuntimeError):
    """A run whose loss or weights became inf or nan: main() prints it as one line, and
    python -m experiments records it and goes on with its next run."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what was saved before it (train.py: its last checkpoint), for interruptible to say."""


def interruptible(main):
    """A script's main, which Ctrl-C ends with one line on stderr, "interrupted; " and what was
    saved (Interrupted's text; else nothing was), and exit status 130 (128 + SIGINT, as a shell
    has it): a user reads a KeyboardInterrupt traceback as a crash."""
    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            saved = str(e) if isinstance(e, Interrupted) else "nothing was saved"
            print(f"interrupted; {saved}", file=sys.stderr)
            raise SystemExit(130) from None
    return run


def pick_device(name="auto"):
    """auto: cuda, then mps, then cpu. A named device that is not there is a ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for but no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps asked for but MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return name


def keep_freed_memory():
    """On Linux with glibc, keep freed memory for reuse instead of handing it back to the OS.
    By default glibc returns every freed block over 32 MiB at once, so each step page-faults
    its big buffers in again. Measured (docs/BENCH.md, python -m experiments.bench): a 1M-slot layer at d = 512 1.6x
    faster, a full finetuning step 1.4x, the default training step about the same.
    Elsewhere (macOS, Windows, musl) this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)    # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the reusable heap
    libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap


# ----------------------------------------------------------------------------------------
# files written atomically

def temporary_name(path):
    """(folder, name) of path's temporary files, <name>.<pid>.<random>.tmp: the name cut to 200
    bytes, so that what follows it stays within the 255 bytes a file name may have (NAME_MAX)."""
    folder, name = os.path.split(os.path.abspath(path))
    while len(os.fsencode(name)) > 200:
        name = name[:-1]
    return folder, name


def temporary_file(path):
    """(fd, name) of a new temporary file beside path, <name>.<pid>.<random>.tmp: one per writer,
    and the pid says whose it is (remove_stale_temporaries)."""
    folder, name = temporary_name(path)
    return tempfile.mkstemp(dir=folder, prefix=f"{name}.{os.getpid()}.", suffix=".tmp")


def running(pid):
    """Is process pid alive? Elsewhere than POSIX say no: there a file open for writing cannot be deleted anyway."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)                                 # signal 0 only asks
    except ProcessLookupError:
        return False
    except PermissionError:                             # alive, another user's
        pass
    return True


def remove_stale_temporaries(path):
    """Delete the temporary files that killed writes of path left: temporary_file's names whose
    process is gone, and the <name>.<random>.tmp of earlier versions. No other file is touched.
    Processes are looked up on this host only: where two hosts write the same file in a shared
    folder, one may delete the other's temporary file mid-write (that write then fails, and the
    old file stays intact). Give each host its own output folder."""
    folder, name = temporary_name(path)
    ours = re.compile(re.escape(name) + r"\.(?:(\d+)\.)?[a-z0-9_]{8}\.tmp")
    for f in os.listdir(folder):
        m = ours.fullmatch(f)
        if m and not (m.group(1) and running(int(m.group(1)))):
            try:
                os.remove(os.path.join(folder, f))
            except OSError:                             # a read-only folder: the write below says so
                pass


def printed_to(path):
    """The file descriptor (1 or 2) of the standard stream that path is (--json /dev/stdout), or None."""
    for fd in (1, 2):
        try:
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                return fd
        except OSError:                                 # path not there, or the stream closed
            pass
    return None


def written_in_place(path):
    """Is path written straight into rather than replaced: a device or FIFO (/dev/null, a terminal,
    a pipe), or the file this process prints to? A rename over it would replace it."""
    try:
        mode = os.stat(path).st_mode                   # through a symlink: what it points to
    except OSError:
        return False                                    # not there yet: written atomically
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or printed_to(path) is not None


def write_in_place(path, write):
    """write(f) straight into a device, FIFO or standard stream (written_in_place). What this
    process printed to the same stream goes first: it is flushed, and written through the same file."""
    fd = printed_to(path)
    if fd is None:
        with open(path, "wb") as f:
            write(f)
        return
    (sys.stdout if fd == 1 else sys.stderr).flush()
    with os.fdopen(os.dup(fd), "wb") as f:
        write(f)


def check_writable(path, what):
    """Fail now, before any work, if path could not be written at the end: a device or FIFO must
    allow writing (it is not opened: a FIFO's reader would see the end of the data); otherwise
    make the folder of the file (a symlink's target) and create and delete a temporary file there.
    ValueError names the option (what) and the path."""
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder; give a file name")
    if written_in_place(path):
        if not os.access(path, os.W_OK):
            raise ValueError(f"{what} {path} cannot be written (permission denied); choose another path")
        return
    real = os.path.realpath(path)                       # a symlink's target is what gets written
    folder = os.path.dirname(real)
    while not os.path.exists(folder):                   # the nearest part of the path that exists
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path} cannot be written: {folder} is a file, not a folder; choose another path")
    try:
        os.makedirs(os.path.dirname(real), exist_ok=True)
        fd, tmp = temporary_file(real)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be written ({e.strerror or e}); choose another path") from None


def write_atomic(path, write):
    """write(f) fills a temporary file beside path (f opened for binary writing), which is
    fsynced and renamed over path; then the folder is fsynced, so the rename survives a power
    cut too. A kill at any moment leaves the old file intact, a failed write leaves no half
    file behind, and the temporary files of killed writes are removed by the next write.
    A symlink's target is written (the link stays a link); a device, FIFO or the stream this
    process prints to is written straight into (write_in_place)."""
    if written_in_place(path):
        return write_in_place(path, write)
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    umask = os.umask(0)                                 # mkstemp makes the file private (0600): give
    os.umask(umask)                                     # it the mode open() would (0644 under umask 022)
    fd, tmp = temporary_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~umask)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(what, e):
    """The one line of an output that could not be written (what: its option and path), and what to do."""
    if not isinstance(e, OSError):
        return f"could not write {what} ({e})"          # a value no JSON reader accepts, say
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    return f"could not write {what} ({e.strerror or e}); {'free space or ' if full else ''}choose another path"


def write_text(path, text):
    """Atomically, in UTF-8."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, data):
    """Atomically, indented; a NaN or inf is a ValueError rather than a file no JSON reader accepts."""
    write_text(path, json.dumps(data, indent=1, allow_nan=False))
