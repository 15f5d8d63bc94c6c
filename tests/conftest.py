import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_TINYSTORIES = os.path.join(ROOT, "..", "shared", "data", "tinystories")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small generated corpus, prepared once for the whole test session."""
    from data.prepare import DataConfig, prepare
    cfg = DataConfig(out_dir=str(tmp_path_factory.mktemp("corpus")), n_stories=1500, n_val_stories=100,
                     fact_repeats=8, vocab_size=1024)
    prepare(cfg)
    return cfg
