"""Weight sync (SparseRL-Sync / PULSE): full and sparse payloads reproduce learner.to(dtype) bit-exactly."""

import copy
import hashlib
import pickle

import pytest
import torch

from rlvr.weights.sync import (SYNC_METHODS, TensorPatch, WeightPayload, WeightPublisher,
                                    WeightReceiver, WeightSyncError, changed_fraction, state_checksum)

INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
ENGINE_DTYPES = [torch.float32, torch.bfloat16]
NAN_BITS = [0x7F800001, 0x7FC00000, 0x7FC12345, 0x7FFFFFFF, -0x003FFFFF, -0x00000001]  # as int32


def raw(t, dtype=None):
    """Independent reference: the raw bits of ``t`` cast to ``dtype`` (floating tensors only)."""
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    t = t.detach().contiguous().reshape(-1)
    return t.view(INT_OF_SIZE[t.element_size()])


def assert_bit_exact(worker, learner, dtype):
    assert set(worker) == set(learner)
    for name, t in learner.items():
        w = worker[name]
        assert w.dtype == (dtype if t.is_floating_point() else t.dtype), name
        assert torch.equal(raw(w), raw(t, dtype)), name


def make_learner(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(40, 12, generator=g) * 0.02,
        "block.attn.weight": torch.randn(12, 12, generator=g) * 0.02,
        "block.norm.weight": torch.ones(12),
        "block.mlp.bias": torch.zeros(24),
        "block.mlp.weight": torch.randn(24, 12, generator=g) * 0.02,
        "scale": torch.tensor(1.5),
        "step_count": torch.tensor([0, 0, 7], dtype=torch.int64),
        "keep_mask": torch.ones(5, dtype=torch.bool),
    }


def make_worker(learner, dtype, seed=99):
    """A worker copy in the engine dtype filled with garbage (an anchor must overwrite all of it)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in learner.items():
        if t.is_floating_point():
            out[name] = torch.randn(t.shape, generator=g).to(dtype)
        elif t.dtype == torch.bool:
            out[name] = torch.zeros(t.shape, dtype=torch.bool)
        else:
            out[name] = torch.randint(-5, 5, t.shape, generator=g, dtype=t.dtype)
    return out


def random_update(learner, g, step):
    """In-place changes of varying density and size, ±0.0 flips and NaN payloads."""
    for name, t in learner.items():
        flat = t.view(-1)
        n = flat.numel()
        if t.is_floating_point():
            density = [0.0, 1.0 / n, 0.02, 0.2, 0.5, 1.0][int(torch.randint(0, 6, (1,), generator=g))]
            k = int(round(density * n))
            idx = torch.randperm(n, generator=g)[:k]
            scale = [1e-9, 1e-6, 1e-4, 1e-2][int(torch.randint(0, 4, (1,), generator=g))]
            flat[idx] += torch.randn(k, generator=g) * scale
            if n >= 6 and step % 3 == 0:  # signed zeros: set, then flip the sign on later steps
                z = torch.randint(0, n, (2,), generator=g)
                flat[z] = 0.0 if step % 2 else -0.0
            if n >= 6 and step % 4 == 1:  # distinct NaN bit patterns
                j = torch.randint(0, n, (1,), generator=g)
                flat.view(torch.int32)[j] = NAN_BITS[step % len(NAN_BITS)]
        elif t.dtype == torch.bool:
            if step % 2:
                flat[int(torch.randint(0, n, (1,), generator=g))] ^= True
        elif step % 2:
            flat[0] += 1
            flat[int(torch.randint(0, n, (1,), generator=g))] = int(torch.randint(-100, 100, (1,), generator=g))


def expected_stats(prev, new, dtype):
    """Changed count and bytes of a sparse payload, computed by hand from the byte formula."""
    changed = nbytes = 0
    for name, t in new.items():
        c = int((raw(prev[name], dtype) != raw(t, dtype)).sum())
        n, s = t.numel(), raw(t, dtype).element_size()
        changed += c
        if c:
            nbytes += n * s if c * (4 + s) > n * s else c * (4 + s)
    return changed, nbytes


def dense_size(sd, dtype):
    return sum(t.numel() * raw(t, dtype).element_size() for t in sd.values())


def via_object_store(payloads):
    return pickle.loads(pickle.dumps(payloads))


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", SYNC_METHODS)
@pytest.mark.parametrize("dtype", ENGINE_DTYPES, ids=str)
def test_thirty_random_updates_stay_bit_exact_for_workers_at_every_lag(method, dtype):
    g = torch.Generator().manual_seed(1)
    learner = make_learner()
    pub = WeightPublisher(method, dtype=dtype, bucket_bytes=512, history=4, debug=True)
    lags = [1, 3, 7]  # the last one falls out of the 4-patch history and needs anchors
    workers = [make_worker(learner, dtype, seed=i) for i in range(len(lags))]
    receivers = [WeightReceiver(debug=True) for _ in lags]
    prev = None
    saw_sparse = saw_fallback = False
    for v in range(1, 31):
        if v > 1:
            random_update(learner, g, v)
        payload = pub.publish(learner, v)
        assert payload.version == v and pub.version == v
        assert payload.dense_nbytes == dense_size(learner, dtype)
        assert payload.numel == sum(t.numel() for t in learner.values())
        assert payload.nbytes == sum(p.nbytes() for b in payload.buckets for p in b)
        assert payload.checksum == state_checksum(learner, dtype)
        if method == "full" or prev is None:
            assert payload.base_version is None
            assert payload.nbytes == payload.dense_nbytes and payload.changed == payload.numel
        else:
            assert payload.base_version == v - 1
            assert (payload.changed, payload.nbytes) == expected_stats(prev, learner, dtype)
            kinds = {p.kind for b in payload.buckets for p in b}
            saw_sparse |= "sparse" in kinds
            saw_fallback |= "dense" in kinds
        prev = copy.deepcopy(learner)
        for lag, worker, rec in zip(lags, workers, receivers):
            if v % lag == 0 or v == 30:
                assert rec.apply(worker, via_object_store(pub.payloads_since(rec.version))) == v
                assert_bit_exact(worker, learner, dtype)
                assert pub.payloads_since(rec.version) == []
    if method == "sparse":
        assert saw_sparse and saw_fallback


@pytest.mark.parametrize("dtype,itemsize", [(torch.bfloat16, 2), (torch.float32, 4)], ids=str)
def test_dense_fallback_and_byte_formula(dtype, itemsize):
    g = torch.Generator().manual_seed(2)
    base = {name: torch.rand(n, generator=g) for name, n in
            [("all", 100), ("one", 100), ("none", 100), ("edge_sparse", 300), ("edge_dense", 300)]}
    pub = WeightPublisher("sparse", dtype=dtype)
    first = pub.publish(base, 0)
    assert first.base_version is None and first.nbytes == 900 * itemsize
    # sparse bytes c*(4+s) vs dense n*s: bf16 threshold 1/3 (100 of 300 -> 600 == 600 stays sparse),
    # fp32 threshold 1/2 (150 of 300 -> 1200 == 1200 stays sparse); one more element goes dense.
    k = 300 * itemsize // (4 + itemsize)
    new = {n: t.clone() for n, t in base.items()}
    new["all"] += 10.0                                 # every element changes (values in [0, 1))
    new["one"][17] += 1.0
    new["edge_sparse"][:k] += 1.0
    new["edge_dense"][:k + 1] += 1.0
    payload = pub.publish(new, 1)
    patches = {p.name: p for b in payload.buckets for p in b}
    assert set(patches) == {"all", "one", "edge_sparse", "edge_dense"}  # unchanged tensors are not sent
    assert patches["all"].kind == "dense" and patches["all"].indices is None
    assert patches["all"].nbytes() == 100 * itemsize
    assert patches["one"].kind == "sparse" and patches["one"].indices.dtype == torch.int32
    assert patches["one"].indices.tolist() == [17] and patches["one"].values.dtype == dtype
    assert patches["one"].nbytes() == 4 + itemsize
    assert patches["edge_sparse"].kind == "sparse" and patches["edge_dense"].kind == "dense"
    assert payload.nbytes == 100 * itemsize + (4 + itemsize) + k * (4 + itemsize) + 300 * itemsize
    assert payload.changed == 100 + 1 + k + (k + 1)
    assert payload.dense_nbytes == 900 * itemsize and payload.numel == 900
    worker = {n: torch.zeros(t.shape, dtype=dtype) for n, t in base.items()}
    WeightReceiver().apply(worker, pub.payloads_since(None))
    assert_bit_exact(worker, new, dtype)


def test_bucketing_fills_buckets_in_state_dict_order():
    sd = {f"t{i}": torch.randn(n) for i, n in enumerate([10, 30, 5, 60, 20, 20])}  # fp32: 4 B each
    payload = WeightPublisher("full", bucket_bytes=160).publish(sd, 0)
    assert [[p.name for p in b] for b in payload.buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4", "t5"]]
    assert [p.shape for b in payload.buckets for p in b] == [(n,) for n in [10, 30, 5, 60, 20, 20]]


def test_a_worker_that_skipped_versions_gets_the_missing_chain():
    learner = make_learner()
    pub = WeightPublisher("sparse", dtype=torch.bfloat16, history=16, debug=True)
    worker, rec = make_worker(learner, torch.bfloat16), WeightReceiver(debug=True)
    for v in range(1, 8):
        if v > 1:
            learner["embed.weight"][v] += 0.5  # a few elements per version
            learner["block.mlp.bias"][v] = v
        pub.publish(learner, v)
        if v == 3:
            rec.apply(worker, pub.payloads_since(None))
            at_v3 = copy.deepcopy(worker)
    chain = pub.payloads_since(3)
    assert [p.version for p in chain] == [4, 5, 6, 7]
    assert [p.base_version for p in chain] == [3, 4, 5, 6]
    # out of order: v5 patches v4, but the receiver holds v3; nothing is written
    with pytest.raises(WeightSyncError, match="broken chain"):
        rec.apply(worker, [chain[1]])
    with pytest.raises(WeightSyncError):
        rec.apply(worker, chain[::-1])
    with pytest.raises(WeightSyncError):
        rec.apply(worker, [chain[0], chain[2]])
    assert rec.version == 3
    assert all(torch.equal(raw(worker[n]), raw(at_v3[n])) for n in worker)
    assert rec.apply(worker, chain) == 7
    assert_bit_exact(worker, learner, torch.bfloat16)
    assert sum(p.nbytes for p in chain) < pub.payloads_since(None)[0].nbytes


def test_a_worker_older_than_the_history_gets_a_full_anchor():
    learner = make_learner()
    pub = WeightPublisher("sparse", dtype=torch.bfloat16, history=2)
    for v in range(1, 8):
        learner["embed.weight"][0, v] += 1.0
        pub.publish(learner, v)
    assert [p.version for p in pub.payloads_since(5)] == [6, 7]
    for old in (None, 3, 4, 42):  # 42: a version this publisher never made
        (anchor,) = pub.payloads_since(old)
        assert anchor.base_version is None and anchor.version == 7
        assert anchor.nbytes == dense_size(learner, torch.bfloat16)
        assert anchor.changed == anchor.numel
    worker, rec = make_worker(learner, torch.bfloat16), WeightReceiver()
    rec.version = 3
    assert rec.apply(worker, pub.payloads_since(rec.version)) == 7
    assert_bit_exact(worker, learner, torch.bfloat16)
    assert pub.payloads_since(7) == []


def test_a_tampered_payload_fails_the_debug_checksum_and_forces_an_anchor():
    learner = make_learner()
    pub = WeightPublisher("sparse", dtype=torch.bfloat16, debug=True)
    pub.publish(learner, 1)
    learner["block.attn.weight"][2, 3] += 1.0
    pub.publish(learner, 2)
    worker, rec = make_worker(learner, torch.bfloat16), WeightReceiver(debug=True)
    rec.apply(worker, pub.payloads_since(None))
    learner["block.attn.weight"][4, 4] += 1.0
    good = pub.publish(learner, 3)
    bad = copy.deepcopy(good)
    (patch,) = [p for b in bad.buckets for p in b]
    patch.values.view(torch.int16)[0] ^= 1  # one flipped bit
    with pytest.raises(WeightSyncError, match="checksum"):
        rec.apply(worker, [bad])
    assert rec.version is None
    assert rec.apply(worker, pub.payloads_since(rec.version)) == 3  # recovers through an anchor
    assert_bit_exact(worker, learner, torch.bfloat16)
    # without debug the same tampering goes unnoticed: the check is what catches it
    plain = WeightReceiver()
    w2 = make_worker(learner, torch.bfloat16)
    plain.apply(w2, [pub.latest_anchor()])
    plain.version = 2
    plain.apply(w2, [bad])
    assert not torch.equal(raw(w2["block.attn.weight"]), raw(learner["block.attn.weight"], torch.bfloat16))


def test_full_method_sends_dense_payloads_and_bf16_is_half_of_fp32():
    learner = {k: v for k, v in make_learner().items() if v.is_floating_point()}
    size = sum(t.numel() for t in learner.values())
    full32 = WeightPublisher("full", dtype=torch.float32)
    full16 = WeightPublisher("full", dtype=torch.bfloat16)
    for v in range(3):
        learner["embed.weight"][0, 0] += 1.0  # one element: full still sends everything
        p32, p16 = full32.publish(learner, v), full16.publish(learner, v)
        assert p32.base_version is None and p16.base_version is None
        assert p32.nbytes == p32.dense_nbytes == 4 * size
        assert p16.nbytes == p16.dense_nbytes == 2 * size
        assert p32.changed == p32.numel == size
        assert all(p.kind == "dense" for b in p16.buckets for p in b)
    assert full32.payloads_since(0) == [p32] and full32.payloads_since(None) == [p32]
    assert full32.payloads_since(2) == []
    w = {n: torch.zeros_like(t) for n, t in learner.items()}
    WeightReceiver().apply(w, full32.payloads_since(None))
    assert_bit_exact(w, learner, torch.float32)


def test_publish_copies_the_learner_weights():
    """fp32 -> fp32 is a no-op cast: the payload must not alias the learner's tensors."""
    learner = {"w": torch.randn(50)}
    pub = WeightPublisher("full", dtype=torch.float32)
    expect = learner["w"].clone()
    payload = pub.publish(learner, 0)
    learner["w"].add_(1.0)
    (patch,) = payload.buckets[0]
    assert torch.equal(raw(patch.values), raw(expect))


def test_sync_into_a_real_module_including_buffers():
    torch.manual_seed(0)

    def net():
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.BatchNorm1d(16),
                                   torch.nn.ReLU(), torch.nn.Linear(16, 3))

    learner = net()
    torch.manual_seed(1)
    worker = net().to(torch.bfloat16)
    worker_params = {n: p.data_ptr() for n, p in worker.named_parameters()}
    assert worker[2].num_batches_tracked.dtype == torch.int64
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    pub = WeightPublisher("sparse", dtype=torch.bfloat16, debug=True)
    rec = WeightReceiver(debug=True)
    for v in range(6):
        if v:
            loss = learner(torch.randn(8, 6)).square().mean()  # BatchNorm updates running stats
            opt.zero_grad()
            loss.backward()
            opt.step()
        pub.publish(learner.state_dict(), v)
        assert rec.apply(worker, pub.payloads_since(rec.version)) == v
        assert_bit_exact(worker.state_dict(), learner.state_dict(), torch.bfloat16)
    assert int(worker[2].num_batches_tracked) == 5
    assert {n: p.data_ptr() for n, p in worker.named_parameters()} == worker_params  # in place
    assert all(p.requires_grad for p in worker.parameters())


def test_receiver_rejects_payloads_that_do_not_fit():
    learner = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    payload = WeightPublisher("full", dtype=torch.float32).publish(learner, 0)
    with pytest.raises(WeightSyncError):  # wrong dtype: bits cannot be written exactly
        WeightReceiver().apply({"w": torch.zeros(4, 4, dtype=torch.bfloat16), "b": torch.zeros(4)}, [payload])
    with pytest.raises(WeightSyncError):  # wrong shape
        WeightReceiver().apply({"w": torch.zeros(16), "b": torch.zeros(4)}, [payload])
    with pytest.raises(WeightSyncError):  # an anchor must cover every tensor of the worker
        WeightReceiver().apply({"w": torch.zeros(4, 4), "b": torch.zeros(4), "extra": torch.zeros(1)}, [payload])
    with pytest.raises(WeightSyncError):  # a tensor the worker does not have
        WeightReceiver().apply({"w": torch.zeros(4, 4)}, [payload])


def test_publisher_anchors_when_the_state_dict_changes_and_versions_must_increase():
    pub = WeightPublisher("sparse", dtype=torch.bfloat16)
    pub.publish({"w": torch.randn(8)}, 1)
    p = pub.publish({"w": torch.randn(8), "v": torch.randn(2)}, 2)
    assert p.base_version is None and pub.payloads_since(1)[0].base_version is None
    p = pub.publish({"w": torch.randn(9), "v": torch.randn(2)}, 3)
    assert p.base_version is None
    with pytest.raises(ValueError):
        pub.publish({"w": torch.randn(9), "v": torch.randn(2)}, 3)
    with pytest.raises(ValueError):
        WeightPublisher("delta")


def test_state_checksum_hashes_the_cast_bits():
    a = {"x": torch.tensor([1.0, 0.0, 2.0]), "n": torch.tensor([3], dtype=torch.int64)}
    b = {"n": a["n"].clone(), "x": a["x"].clone()}  # other order, same bits
    assert state_checksum(a, torch.float32) == state_checksum(b, torch.float32)
    b["x"][1] = -0.0  # equal as numbers, different bits
    assert bool((a["x"] == b["x"]).all()) and state_checksum(a, torch.float32) != state_checksum(b, torch.float32)
    small = {"x": torch.tensor([1.0, 0.0, 2.0 + 2 ** -12]), "n": a["n"]}  # below bf16 resolution at 2.0
    assert state_checksum(small, torch.bfloat16) == state_checksum(a, torch.bfloat16)
    assert state_checksum(small, torch.float32) != state_checksum(a, torch.float32)
    assert state_checksum(a, torch.bfloat16) == state_checksum({k: v.to(torch.bfloat16) if v.is_floating_point()
                                                                else v for k, v in a.items()}, None)
    assert len(state_checksum(a, None)) == 2 * hashlib.blake2b(digest_size=16).digest_size


def test_changed_fraction_counts_bit_changes():
    prev = {"a": torch.zeros(10), "b": torch.arange(10, dtype=torch.int64)}
    new = {"a": prev["a"].clone(), "b": prev["b"].clone()}
    new["a"][0] = -0.0
    new["a"][1] = 1e-30           # fp32 change, bf16 too (bf16 has fp32's exponent range)
    new["b"][5] = 50
    assert changed_fraction(prev, new, torch.float32) == pytest.approx(3 / 20)
    prev2 = {"a": torch.full((4,), 1.0)}
    new2 = {"a": torch.tensor([1.0 + 2 ** -10, 1.0 + 2 ** -7, 1.0, 1.5])}
    assert changed_fraction(prev2, new2, torch.bfloat16) == pytest.approx(2 / 4)
    assert changed_fraction(prev2, new2, torch.float32) == pytest.approx(3 / 4)


def test_one_adamw_step_at_rl_lr_barely_changes_bf16():
    """PULSE's observation: Adam steps at lr 1e-5 fall mostly below bf16 rounding (not below fp32's)."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(256, 256, generator=g) * 0.02)
    before = {"w": w.detach().clone()}
    opt = torch.optim.AdamW([w], lr=1e-5)
    (w * torch.randn(256, 256, generator=g)).sum().backward()
    opt.step()
    after = {"w": w.detach()}
    f16 = changed_fraction(before, after, torch.bfloat16)
    f32 = changed_fraction(before, after, torch.float32)
    assert 0.0 < f16 < 0.4
    assert f32 > 0.99
    # a sparse bf16 patch of this step is then smaller than the dense bf16 tensor
    pub = WeightPublisher("sparse", dtype=torch.bfloat16)
    pub.publish(before, 0)
    p = pub.publish(after, 1)
    assert p.changed == round(f16 * p.numel) and p.nbytes == p.changed * 6 < p.dense_nbytes


def test_payload_types_are_plain_dataclasses():
    p = WeightPayload(version=1, base_version=None,
                      buckets=[[TensorPatch("x", "dense", (2,), torch.zeros(2), None)]])
    assert pickle.loads(pickle.dumps(p)).buckets[0][0].nbytes() == 8
