"""Imports point one way: no project module imports a module above it in the reading order."""
import ast
import glob
import os
import re

import pytest

from conftest import ROOT

# The reading order, lowest first. A module may import only modules in lower layers;
# modules in one layer do not import each other.
LAYERS = [
    ["common"],                                   # command line, device, malloc: imports no project module
    ["data.corpus", "data.tokenizer"],           # stories; the BPE tokenizer
    ["data.world"],                               # the knowledge world, told in the stories' words
    ["data.documents"],                           # documents about new entities, told by the world's generator
    ["data.prepare"],
    ["memory"],
    ["model"],                                    # the model: torch and memory.py only
    ["checkpoint"],                               # its checkpoints, and the corpus each names
    ["evaluate"],                                 # metrics
    ["facts"],                                    # the facts a stream teaches, and their batches
    ["train"],
    ["lora", "sparse"],                           # the two methods' own parts: LoRA, the paper's sparse step
    ["recipes"],                                  # the steps beyond the paper, plugged into the sparse step
    ["finetune"],
    ["experiments.analyses"],                     # the experiments' looks inside streams
    ["experiments.sweeps", "experiments.bench"],  # the experiments and the speed figures
    ["experiments.__main__"],                     # python -m experiments
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def project_modules():
    """Module name -> path of every Python file of the project outside tests/."""
    paths = [p for folder in ("", "data", "experiments") for p in glob.glob(os.path.join(ROOT, folder, "*.py"))]
    names = {os.path.relpath(p, ROOT)[:-3].replace(os.sep, "."): p for p in paths}
    names.pop("data.__init__", None)                 # the packages themselves import nothing
    names.pop("experiments.__init__", None)
    return names


def imported(source, known, package=""):
    """Every project module that source imports, anywhere in it (inside functions too).
    package: the importing module's package, against which relative imports resolve."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:                                   # from .prepare import x, from . import world
                parts = package.split(".")
                module = ".".join(parts[:len(parts) + 1 - node.level] + [module]).strip(".")
            out |= {module} & known
            out |= {f"{module}.{a.name}" for a in node.names} & known   # from data import corpus
    return out


def upward(name, source, known):
    """The imports of module `name` that are not in a lower layer."""
    return sorted(m for m in imported(source, known, name.rpartition(".")[0]) if RANK[m] >= RANK[name])


def test_every_module_has_a_place_in_the_order():
    assert set(project_modules()) == set(RANK), "add a new module to LAYERS in tests/test_structure.py"


@pytest.mark.parametrize("name", sorted(RANK))
def test_no_module_imports_one_above_it(name):
    with open(project_modules()[name], "r", encoding="utf-8") as f:
        source = f.read()
    assert upward(name, source, set(RANK)) == [], f"{name} imports modules at or above its layer"


def test_the_check_sees_late_and_aliased_imports():
    known = set(RANK)
    late = "import torch\n\ndef main():\n    from train import config_parser\n    import finetune as ft\n"
    assert upward("data.prepare", late, known) == ["finetune", "train"]
    assert upward("evaluate", "from data import corpus\nimport model\n", known) == []
    assert upward("lora", "import sparse\n", known) == ["sparse"]       # same layer: not allowed either
    relative = "from .prepare import load_facts\nfrom . import world\n"
    assert upward("data.tokenizer", relative, known) == ["data.prepare", "data.world"]
    assert upward("data.world", "from .corpus import story\n", known) == []


def function_source(module, name):
    """The source of a top-level function of a project module, and its length in lines."""
    with open(project_modules()[module], "r", encoding="utf-8") as f:
        source = f.read()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(source, node), node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("module, name", [("sparse", "sparse_step"), ("finetune", "run_stream"),
                                          ("finetune", "teach_fact")])
def test_the_spine_names_no_step_beyond_the_paper_and_reads_in_one_screen(module, name):
    from dataclasses import fields
    from recipes import RecipeConfig
    source, lines = function_source(module, name)
    beyond = [f.name for f in fields(RecipeConfig)] + ["kl", "rcfg"]
    named = sorted({w for w in re.findall(r"[A-Za-z_]+", source.replace("-", "_")) if w in beyond})
    assert named == [], f"{module}.{name} names options beyond the paper: {named} (they belong in recipes.py)"
    assert lines <= 40, f"{module}.{name} is {lines} lines: keep the spine to one screen"


def test_the_check_sees_an_option_beyond_the_paper():
    from dataclasses import fields
    from recipes import RecipeConfig
    assert "grow_t" in {f.name for f in fields(RecipeConfig)}
    assert "grow_t" in re.findall(r"[A-Za-z_]+", "t = cfg.grow_t or t")   # what the test above looks for


def test_the_model_imports_only_torch_and_the_memory_layer():
    import sys
    with open(project_modules()["model"], "r", encoding="utf-8") as f:
        tree = ast.parse(f.read())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    outside = sorted(m for m in modules if m.split(".")[0] not in {"torch", "memory"} | sys.stdlib_module_names)
    assert outside == [], f"model.py imports {outside}: checkpoints and corpora belong in checkpoint.py"
