import pytest
import torch

from checkpoint import config_dict, save_checkpoint

from model import GPT, GPTConfig


def tiny(**kw):
    base = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, memory_layers=(1,),
                mem_n_keys=8, mem_heads=2, mem_topk=4, mem_k_dim=8)
    base.update(kw)
    return GPTConfig(**base)


def test_dense_is_same_code_with_empty_list():
    mem, dense = GPT(tiny()), GPT(tiny(memory_layers=()))
    assert len(mem.memory_modules) == 1 and len(dense.memory_modules) == 0
    d_mem, v_mem = mem.num_params()
    d_dense, v_dense = dense.num_params()
    assert v_dense == 0 and v_mem == 64 * 32
    # same attention, embeddings and norms: only the FFN of block 1 differs
    assert {k for k in dense.state_dict() if "ffn" not in k} == {k for k in mem.state_dict() if "ffn" not in k}


def test_shared_values_is_one_table():
    m = GPT(tiny(n_layer=3, memory_layers=(0, 2), shared_values=True))
    assert len(m.memory_modules) == 2 and len(m.value_params()) == 1
    assert m.memory_modules[0].values.weight is m.memory_modules[1].values.weight
    assert len(GPT(tiny(n_layer=3, memory_layers=(0, 2))).value_params()) == 2


def test_loss_falls_on_fixed_batch():
    torch.manual_seed(0)
    m = GPT(tiny(mem_sparse_grad=False))
    x = torch.randint(0, 64, (4, 16))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    _, first = m(x[:, :-1], x[:, 1:])
    for _ in range(60):
        _, loss = m(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item()


def test_checkpoint_roundtrip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    cfg = tiny()
    m = GPT(cfg).eval()
    x = torch.randint(0, 64, (2, 16))
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"model": m.state_dict(), "model_args": config_dict(cfg), "tokenizer": "gpt2"})
    ckpt = torch.load(path, weights_only=True)
    m2 = GPT(GPTConfig(**ckpt["model_args"])).eval()
    m2.load_state_dict(ckpt["model"])
    assert torch.equal(m(x)[0], m2(x)[0])
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_generate_greedy_is_deterministic():
    torch.manual_seed(0)
    m = GPT(tiny()).eval()
    x = torch.randint(0, 64, (1, 3))
    a = m.generate(x, 10, temperature=0)
    b = m.generate(x, 10, temperature=0)
    assert a.shape == (1, 13) and torch.equal(a, b)


@pytest.mark.parametrize("memory_layers", [(1,), (0,), ()])         # memory in the last block, the first, none
def test_logits_at_marked_positions_are_those_of_the_whole_forward(memory_layers):
    torch.manual_seed(0)
    m = GPT(tiny(memory_layers=memory_layers)).eval()
    x = torch.randint(0, 64, (3, 10))
    at = torch.zeros(3, 10, dtype=torch.bool)
    at[0, 2], at[1, 5:9], at[2, 9] = True, True, True
    with torch.no_grad():
        full = m(x)[0]
        with m.recording_slots():
            part = m(x, at=at)[0]
            reads = m.slot_reads()
    assert part.shape == (6, 64)
    assert torch.allclose(part, full[at], atol=1e-6)                   # the same rows, in row order
    assert torch.allclose(part[1:5], full[1, 5:9], atol=1e-6)
    if memory_layers == (1,):                                          # the last block looked up the 6 marked positions only
        assert reads[0].shape[:2] == (1, 6)
    elif memory_layers == (0,):                                        # an earlier block looks up every position
        assert reads[0].shape[:2] == (3, 10)
