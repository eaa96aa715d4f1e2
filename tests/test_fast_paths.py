"""Fast paths vs the reference (official) computation: equal within fp32 rounding, forward and
backward; golden fixtures in reference mode too; dense-PE cache invalidation; bf16 tolerance;
activation checkpointing. Measured max errors are in benchmarks/results/ and the README."""
from __future__ import annotations

import pytest
import test_golden as golden
import torch
from numerics import ScoreInputs, assert_scores_close
from torch import nn

import voxprompt
from voxprompt import SamConfig
from voxprompt.models.fast import reference_enabled, reference_mode

FP32_REL = 2e-6  # relative L2, fast vs reference (measured: <= 6e-7 on every tiny model); IoU scores: numerics.py
BF16_REL = 3e-2  # relative L2 of bf16 autocast vs fp32 reference (measured: <= 1.1e-2)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values for every floating tensor (rel-pos tables and pos_embed included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):  # BatchNorm variances must stay positive
                t.copy_(0.5 + 0.5 * noise.abs())
            elif t.dim() >= 2 and "pos_embed" not in name and "rel_pos" not in name:
                t.copy_(noise / t[0].numel() ** 0.5)
            elif name.endswith("weight") and t.dim() == 1:
                t.copy_(1 + 0.1 * noise)
            else:
                t.copy_(0.3 * noise)
    return model


def test_mode_switch_is_scoped():
    assert not reference_enabled()
    with reference_mode():
        assert reference_enabled()
        with reference_mode(False):
            assert not reference_enabled()
        assert reference_enabled()
    assert not reference_enabled()


# ------------------------------------------------------------ golden fixtures in reference mode
@pytest.fixture(scope="module")
def ref_fixtures(tiny_med3d, tiny_sam, tiny_med2d, tiny_unet):
    out = {}
    for key, (g, model, _) in {"med3d": tiny_med3d, "sam": tiny_sam, "med2d": tiny_med2d, "unet": tiny_unet}.items():
        image = g["image_encoder_input"] if "image_encoder_input" in g else g["image"]
        with reference_mode(), torch.no_grad():
            out[key] = (g, model, model.encode(image.float()))
    return out


def test_golden_embeddings_in_reference_mode(ref_fixtures):
    with reference_mode():
        golden.test_med3d_embedding_and_dense_pe(ref_fixtures["med3d"])
        golden.test_sam_embedding(ref_fixtures["sam"])
        golden.test_med2d_embedding(ref_fixtures["med2d"])
        golden.test_unet_encoder_and_intermediates(ref_fixtures["unet"])


@pytest.mark.parametrize("case", list(golden.MED3D_CASES))
def test_golden_med3d_in_reference_mode(ref_fixtures, case):
    with reference_mode():
        golden.test_med3d_cases(ref_fixtures["med3d"], case)


@pytest.mark.parametrize("case", ["a_box", "b_one_point", "c_two_points_with_mask"])
def test_golden_2d_in_reference_mode(ref_fixtures, case):
    with reference_mode():
        golden.test_sam_cases(ref_fixtures["sam"], case)
        golden.test_med2d_cases(ref_fixtures["med2d"], case)
        golden.test_unet_cases(ref_fixtures["unet"], case)


def test_fixture_embeddings_fast_vs_reference(tiny_med3d, tiny_sam, tiny_med2d, tiny_unet, ref_fixtures):
    for key, fast in {"med3d": tiny_med3d, "sam": tiny_sam, "med2d": tiny_med2d, "unet": tiny_unet}.items():
        a, b = fast[2], ref_fixtures[key][2]
        pairs = [(a[k], b[k]) for k in a] if isinstance(a, dict) else [(a, b)]
        for x, y in pairs:
            assert rel(x, y) < FP32_REL, key


# ------------------------------------------------------------ random weights, edge-case geometries
CONFIGS = {
    # 3D, 8^3 tokens in one 14^3 window (SAM-Med3D's geometry)
    "3d_one_window": SamConfig(spatial_dims=3, img_size=128, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                               global_attn_indexes=(1,), window_size=14, prompt_embed_dim=48, num_point_embeddings=2,
                               decoder_mlp_dim=64, iou_head_hidden_dim=32),
    # 3D, 10^3 tokens in 4^3 windows: interior, border and corner windows
    "3d_many_windows": SamConfig(spatial_dims=3, img_size=80, in_chans=1, patch_size=8, embed_dim=32, depth=2,
                                 num_heads=2, global_attn_indexes=(1,), window_size=4, prompt_embed_dim=48,
                                 num_point_embeddings=2, decoder_mlp_dim=64, iou_head_hidden_dim=32),
    # 3D without relative positions (padded keys folded with log(n_pad))
    "3d_no_rel_pos": SamConfig(spatial_dims=3, img_size=64, in_chans=1, patch_size=8, embed_dim=32, depth=1,
                               num_heads=2, global_attn_indexes=(), window_size=5, use_rel_pos=False,
                               prompt_embed_dim=48, num_point_embeddings=2, decoder_mlp_dim=64),
    # 2D, 16^2 tokens in 6^2 windows (partial border windows), adapters
    "2d_windows_adapter": SamConfig(img_size=256, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                                    window_size=6, prompt_embed_dim=32, decoder_mlp_dim=64, adapter=True,
                                    iou_head_hidden_dim=32),
    # 2D, exact multiple (no padding)
    "2d_no_padding": SamConfig(img_size=128, embed_dim=32, depth=2, num_heads=4, global_attn_indexes=(0,),
                               window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64, iou_head_hidden_dim=32),
}


def _prompts(model, batch: int, n: int, gen: torch.Generator):
    d = model.spatial_dims
    coords = torch.rand(batch, n, d, generator=gen) * (model.img_size - 1)
    labels = torch.randint(0, 2, (batch, n), generator=gen)
    mask = torch.randn(batch, 1, *([model.low_res_size] * d), generator=gen)
    return (coords, labels), mask


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_model_fast_vs_reference(name):
    cfg = CONFIGS[name]
    model = randomise(voxprompt.build_model(cfg, name)).eval()
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, cfg.in_chans, *([cfg.img_size] * cfg.spatial_dims), generator=gen)
    with torch.no_grad():
        with reference_mode():
            e_ref = model.encode(image)
        e_fast = model.encode(image)
        assert rel(e_fast, e_ref) < FP32_REL
        for n, multimask in ((1, False), (3, True)):
            pts, mask = _prompts(model, 2, n, gen)
            with reference_mode(), ScoreInputs(model) as h_ref:
                r = model.decode(e_ref, points=pts, mask_input=mask, multimask=multimask)
            with ScoreInputs(model) as h_fast:
                f = model.decode(e_ref, points=pts, mask_input=mask, multimask=multimask)
            assert rel(f[0], r[0]) < FP32_REL
            # IoU scores: not relative to the score (a sum of cancelling terms: 0.02 in 2d_no_padding,
            # from terms of total size 2.5) but to the size of its terms, given that the head's input
            # (a vector of O(1) values) agrees to FP32_REL like every other tensor; see numerics.py
            assert rel(h_fast.inputs[0], h_ref.inputs[0]) < FP32_REL
            tokens = slice(1, 4) if multimask else slice(0, 1)
            assert_scores_close(f[1], r[1], h_ref.tolerance(0, FP32_REL, tokens))
        # one embedding, several prompt rows (broadcast)
        pts, _ = _prompts(model, 3, 2, gen)
        with reference_mode():
            r = model.decode(e_ref[:1], points=pts)
        f = model.decode(e_ref[:1], points=pts)
        assert rel(f[0], r[0]) < FP32_REL


@pytest.mark.parametrize("name", ["3d_one_window", "2d_windows_adapter"])
def test_gradients_fast_vs_reference_and_checkpointing(name):
    cfg = CONFIGS[name]
    model = randomise(voxprompt.build_model(cfg, name)).train()
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(1, cfg.in_chans, *([cfg.img_size] * cfg.spatial_dims), generator=gen)
    pts, mask = _prompts(model, 1, 2, gen)

    def grads(reference: bool, ckpt: bool) -> dict:
        model.zero_grad(set_to_none=True)
        model.image_encoder.gradient_checkpointing = ckpt
        with reference_mode(reference):
            low, iou = model(image, points=pts, mask_input=mask)
            (low.square().mean() + iou.sum()).backward()
        model.image_encoder.gradient_checkpointing = False
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    ref = grads(True, False)
    fast = grads(False, False)
    ckpt = grads(False, True)
    # every parameter gets a gradient, zero for unused mask tokens, as in the official code
    assert ref.keys() == fast.keys() == ckpt.keys()
    scale = max(g.abs().max().item() for g in ref.values())
    for k in fast:  # some gradients are exactly zero in math (k_proj.bias): compare to the scale
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-6 * scale, msg=k)
        torch.testing.assert_close(ckpt[k], fast[k], rtol=1e-6, atol=1e-8 * scale, msg=k)


def test_dense_pe_cache_invalidation():
    model = randomise(voxprompt.build_model(CONFIGS["3d_one_window"], "m")).eval()
    pe = model.prompt_encoder
    first = pe.get_dense_pe()
    assert pe.get_dense_pe() is first  # cached
    with reference_mode():
        assert torch.equal(pe.get_dense_pe(), first)
    sd = model.state_dict()
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    sd[key] = sd[key] * 2
    model.load_state_dict(sd)
    changed = pe.get_dense_pe()
    assert not torch.equal(changed, first)
    with reference_mode():
        assert torch.equal(pe.get_dense_pe(), changed)
    with torch.no_grad():
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(0.5)  # in-place edit: version bump
    assert torch.equal(pe.get_dense_pe(), first)
    model.double()
    assert pe.get_dense_pe().dtype == torch.float32  # the Fourier PE is always float32
    assert pe._dense_pe is not None and pe._dense_pe[1].device == first.device


def test_bf16_autocast_within_tolerance(tiny_med3d, tiny_med2d):
    for g, model, _ in (tiny_med3d, tiny_med2d):
        image = (g["image"]).float()
        pts = (g["points"][:, :1], g["labels"][:, :1]) if "points" in g else (
            g["prompts"]["b_one_point"]["point_coords"], g["prompts"]["b_one_point"]["point_labels"])
        with torch.no_grad(), reference_mode():
            e_ref = model.encode(image)
            low_ref, _ = model.decode(e_ref, points=pts)
        try:
            model.set_precision("bf16")
            with torch.no_grad():
                e_bf = model.encode(image)
                low_bf, _ = model.decode(e_bf, points=pts)
        finally:
            model.set_precision("fp32")
        assert e_bf.dtype == low_bf.dtype == torch.float32
        assert rel(e_bf, e_ref) < BF16_REL
        assert rel(low_bf, low_ref) < 2 * BF16_REL


def test_bad_precision_is_a_usage_error(tiny_med3d):
    with pytest.raises(voxprompt.UsageError):
        tiny_med3d[1].set_precision("int8")


# ------------------------------------------------------------ full size (slow)
FULL = ["sam-med3d", "voxprompt-med3d-small", "sam-med2d", "sam-unet", "sam-vit-b"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_size_fast_vs_reference(name):
    model = randomise(voxprompt.load_model(name, pretrained=False), seed=3)
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(1, model.in_chans, *([model.img_size] * model.spatial_dims), generator=gen)
    pts, mask = _prompts(model, 1, 2, gen)
    with torch.no_grad():
        with reference_mode():
            e_ref = model.encode(image)
            low_ref, _ = model.decode(e_ref, points=pts, mask_input=mask)
        e_fast = model.encode(image)
        low_fast, _ = model.decode(e_ref, points=pts, mask_input=mask)
    pairs = [(e_fast[k], e_ref[k]) for k in e_ref] if isinstance(e_ref, dict) else [(e_fast, e_ref)]
    for a, b in pairs + [(low_fast, low_ref)]:
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("nd", [2, 3])
def test_patch_layout_dot_matches_upscaler_then_dot(nd):
    """The chunked inference upscaler (last conv + activation + hypernetwork dot per row chunk)
    equals the official upscaler followed by the dot, batch > 1, several tokens, ragged chunks."""
    from voxprompt.models.fast.channels_last import patch_layout_dot, unshuffle
    from voxprompt.models.mask_decoder import upscaler

    torch.manual_seed(0)
    seq = upscaler(nd, 32, 8, 4)
    x = torch.randn(2, 32, *([5] * nd))
    hyper = torch.randn(2, 3, 4)
    with torch.no_grad(), reference_mode():
        up = seq(x)
        ref = (hyper @ up.flatten(2)).view(2, 3, *up.shape[2:])
    with torch.no_grad():
        got, levels = patch_layout_dot(seq, x, hyper, chunk=7)
        got = unshuffle(got, nd, levels)
    assert got.shape == ref.shape
    assert ((got - ref).norm() / ref.norm()).item() < 1e-6


def test_low_precision_decoder_copy(tiny_med3d):
    """Low-precision inference keeps a cached copy of the decoder with low-precision weights: with
    autocast (fp16 here; bf16 on GPU) its output equals plain autocast bit for bit; it is reused,
    rebuilt when the weights change, never used under autograd and never part of the state dict."""
    g, model, _ = tiny_med3d
    pts = (g["points"][:, :1], g["labels"][:, :1])
    keys = set(model.state_dict())
    with torch.no_grad():
        emb = model.encode(g["image"].float())
        with torch.autocast("cpu", dtype=torch.float16):
            plain, _ = model.decode(emb, points=pts)  # fp32 weights, cast by autocast
    try:
        model.set_precision("fp16")
        with torch.no_grad():
            assert not model.mixed_cpu()
            copy1 = model.low_precision(model.mask_decoder)
            low, _ = model.decode(emb, points=pts)
            assert model.low_precision(model.mask_decoder) is copy1
        assert copy1 is not model.mask_decoder
        assert copy1.transformer.layers[0].cross_attn_token_to_image.q_proj.weight.dtype == torch.float16
        assert model.mask_decoder.transformer.layers[0].mlp.lin1.weight.dtype == torch.float32
        assert torch.equal(low, plain.float())
        assert set(model.state_dict()) == keys
        assert model.low_precision(model.mask_decoder) is model.mask_decoder  # autograd on: the real one
        sd = {k: v.clone() for k, v in model.state_dict().items()}  # the fixture is shared: restore it
        with torch.no_grad():
            model.mask_decoder.iou_token.weight.add_(1.0)
            assert model.low_precision(model.mask_decoder) is not copy1
        model.load_state_dict(sd)
    finally:
        model.set_precision("fp32")
    with torch.no_grad():
        assert model.low_precision(model.mask_decoder) is model.mask_decoder


def test_mixed_bf16_decoder_on_cpu(tiny_med3d):
    """bf16 decoding on CPU is mixed: bf16 weights only in the token MLPs and the mask upscaler,
    attention weights float32 with bf16 image-side GEMMs, no autocast; the result is within the
    bf16 tolerance of float32, and reference mode or autograd turn the mixing off."""
    g, model, _ = tiny_med3d
    pts = (g["points"][:, :1], g["labels"][:, :1])
    with torch.no_grad():
        emb = model.encode(g["image"].float())
        ref, _ = model.decode(emb, points=pts)
    try:
        model.set_precision("bf16")
        with torch.no_grad():
            assert model.mixed_cpu()
            with reference_mode():
                assert not model.mixed_cpu()
            copy1 = model.low_precision(model.mask_decoder)
            low, _ = model.decode(emb, points=pts)
        assert not model.mixed_cpu()  # autograd on
        layer = copy1.transformer.layers[0]
        assert layer.mlp.lin1.weight.dtype == layer.mlp.lin2.bias.dtype == torch.bfloat16
        assert layer.mlp.gemm_dtype == layer.cross_attn_image_to_token.gemm_dtype == torch.bfloat16
        assert layer.cross_attn_image_to_token.q_proj.weight.dtype == torch.float32
        assert copy1.output_upscaling[0].weight.dtype == copy1.output_upscaling[3].weight.dtype == torch.bfloat16
        assert copy1.iou_prediction_head.layers[0].weight.dtype == torch.float32
        assert model.mask_decoder.transformer.layers[0].mlp.gemm_dtype is None
    finally:
        model.set_precision("fp32")
    assert low.dtype == torch.float32 and not torch.equal(low, ref)
    assert rel(low, ref) < BF16_REL


@pytest.mark.parametrize("few", ["queries", "keys"])
def test_attention_mixed_gemms(few):
    """The few-queries / few-keys attention with bf16 image-side GEMMs stays within the bf16
    tolerance of the float32 result (and really runs in bf16: it differs from it)."""
    from voxprompt.models.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(64, 8, downsample_rate=2)  # internal 32: fewer than 4 rows take a short path
    tokens, image = torch.randn(1, 3, 64), torch.randn(1, 200, 64)
    q, k = (tokens, image) if few == "queries" else (image, tokens)
    with torch.no_grad():
        with reference_mode():
            ref = attn(q, k, k)
        attn.gemm_dtype = torch.bfloat16
        got = attn(q, k, k)
    assert got.dtype == torch.float32 and not torch.equal(got, ref)
    assert rel(got, ref) < BF16_REL


def test_permuted_gather_and_token_major_layout(tiny_med3d):
    """The cached-index gather equals permute + contiguous; embeddings and the dense PE come back
    token-major (same values as reference mode, rows contiguous)."""
    from voxprompt.models.fast.channels_last import permuted

    x = torch.randn(2, 3, 4, 2, 2, 5)
    order = (0, 2, 4, 1, 5, 3)
    with torch.no_grad():
        assert torch.equal(permuted(x, order), x.permute(*order).contiguous())
        assert torch.equal(permuted(x, order), x.permute(*order).contiguous())  # cached index
    g, model, _ = tiny_med3d
    with torch.no_grad():
        emb = model.encode(g["image"].float())
        pe = model.prompt_encoder.get_dense_pe()
        with reference_mode():
            emb_ref = model.encode(g["image"].float())
            pe_ref = model.prompt_encoder.get_dense_pe()
    assert torch.equal(pe, pe_ref)
    assert rel(emb, emb_ref) < FP32_REL
    for t in (emb, pe):
        assert t.flatten(2).transpose(1, 2).is_contiguous()


def test_convt_matrix_cache_follows_weights():
    from voxprompt.models.fast.channels_last import _convt_matrix

    conv = torch.nn.ConvTranspose3d(4, 3, kernel_size=2, stride=2)
    with torch.no_grad():
        w1, _ = _convt_matrix(conv, 3)
        assert _convt_matrix(conv, 3)[0] is w1
        conv.weight.mul_(2)
        w2, _ = _convt_matrix(conv, 3)
    assert torch.allclose(w2, 2 * w1)
    w3, _ = _convt_matrix(conv, 3)  # autograd on: computed from the weights, never cached
    assert w3.requires_grad


def test_packed_linear_for_few_rows():
    """The oneDNN packed-weight linear of the token MLPs equals the plain layers in fp32 rounding
    (ReLU and GELU fused), steps aside where it does not apply, follows weight changes, and a used
    module can still be deep-copied (the packed tensor lives outside it)."""
    import copy

    from voxprompt.models import fast
    from voxprompt.models.common import MLPBlock

    torch.manual_seed(0)
    x = torch.randn(1, 7, 32)
    for act in (nn.ReLU, nn.GELU):
        mlp = MLPBlock(32, 128, act)
        with torch.no_grad():
            ref = mlp.lin2(mlp.act(mlp.lin1(x)))
            h = fast.packed_linear(mlp.lin1, x, mlp.act)
            if h is None:
                pytest.skip("this torch build has no oneDNN")
            assert rel(h, mlp.act(mlp.lin1(x))) < 1e-6
            assert rel(mlp(x), ref) < 1e-6
            assert fast.packed_linear(mlp.lin1, torch.randn(100, 32)) is None  # many rows: plain GEMM
            assert fast.packed_linear(mlp.lin1, x, nn.GELU(approximate="tanh")) is None
            mlp.lin1.weight.mul_(2.0)  # in-place change: repacked
            assert rel(fast.packed_linear(mlp.lin1, x), mlp.lin1(x)) < 1e-6
        assert fast.packed_linear(mlp.lin1, x) is None  # autograd on
        copy.deepcopy(mlp)


def test_cpu_allocator_setting(monkeypatch):
    """Once ``configure_cpu_allocator`` ran, glibc serves a 31 MiB block from its heap and keeps it
    there when freed (a click's temporaries are reused instead of mapped afresh); without it, a
    fresh process maps the block and unmaps it on free. The user's own malloc settings and the
    opt-out are respected."""
    import subprocess
    import sys

    from voxprompt import runtime as fast

    monkeypatch.setattr(fast, "_ALLOCATOR_TUNED", False)
    monkeypatch.setenv("VOXPROMPT_CPU_ALLOCATOR", "0")
    assert fast.configure_cpu_allocator() is False
    monkeypatch.delenv("VOXPROMPT_CPU_ALLOCATOR")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert fast.configure_cpu_allocator() is False
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    # mallinfo2 (glibc >= 2.33) counts mmapped blocks (hblks) and free heap bytes (fordblks): both
    # are exact, unlike page-fault counts, which depend on glibc's dynamic threshold and the load
    script = (
        "import ctypes, os\n"
        "from voxprompt.runtime import configure_cpu_allocator\n"
        "assert configure_cpu_allocator() == (os.environ['VOXPROMPT_CPU_ALLOCATOR'] == '1')\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(k, ctypes.c_size_t) for k in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',"
        " 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.mallinfo2.restype = Info\n"
        "libc.malloc.restype = ctypes.c_void_p; libc.malloc.argtypes = [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "n = 31 << 20\n"
        "before = libc.mallinfo2().hblks\n"
        "p = libc.malloc(n); ctypes.memset(p, 1, n)\n"
        "mapped = libc.mallinfo2().hblks - before\n"
        "libc.free(p)\n"
        "print(mapped, int(libc.mallinfo2().fordblks >= n))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    result = {}
    for setting in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", script], env={**env, "VOXPROMPT_CPU_ALLOCATOR": setting},
                             capture_output=True, text=True, timeout=300)
        if "mallinfo2" in out.stderr:
            pytest.skip("glibc older than 2.33 (no mallinfo2)")
        assert out.returncode == 0, out.stderr
        result[setting] = tuple(int(v) for v in out.stdout.split()[-2:])
    assert result["1"] == (0, 1), result  # from the heap, kept there when freed
    assert result["0"] == (1, 0), result  # glibc's default: mapped, unmapped on free


def test_single_thread_blas_covers_numpy_and_scipy():
    """Both OpenBLAS copies (numpy's and SciPy's, loaded on demand) run one thread per call afterwards,
    in a fresh process with two threads allowed before."""
    import subprocess
    import sys

    script = (
        "import numpy, threadpoolctl\n"
        "from voxprompt.runtime import single_thread_blas\n"
        "assert single_thread_blas()\n"
        "import scipy.sparse.linalg\n"
        "print([lib['num_threads'] for lib in threadpoolctl.threadpool_info() if lib['user_api'] == 'blas'])\n"
    )
    env = {**__import__("os").environ, "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    counts = __import__("ast").literal_eval(out.stdout.strip().splitlines()[-1])
    assert counts and all(n == 1 for n in counts), counts


def test_compiled_decoder_follows_prompt_counts(tiny_med3d):
    """``compile_decoder`` (CPU: inductor) gives the eager fast path's logits, and clicks that add
    points reuse one shape-generic graph after the first change of the prompt count, instead of a
    compile per click."""
    import copy

    from torch._dynamo.utils import counters

    pytest.importorskip("torch._inductor")
    _, model, emb = tiny_med3d
    compiled = copy.deepcopy(model).compile_decoder()
    gen = torch.Generator().manual_seed(0)
    prev = None
    graphs = []
    with torch.inference_mode():
        for n in range(1, 5):
            pts = (torch.rand(1, n, 3, generator=gen) * model.img_size, torch.randint(0, 2, (1, n), generator=gen))
            low, iou = compiled.decode(emb, points=pts, mask_input=prev)
            with ScoreInputs(model) as h:
                ref_low, ref_iou = model.decode(emb, points=pts, mask_input=prev)
            assert rel(low, ref_low) < 1e-5
            # the IoU score relative to the size of its terms, not to itself (numerics.py); the
            # compiled graph may sum the head's last layer in another order (covered by the bound)
            assert_scores_close(iou, ref_iou, h.tolerance(0, 1e-5, slice(0, 1)))
            graphs.append(counters["stats"]["unique_graphs"])
            prev = low
    assert graphs[2] == graphs[3] == graphs[1], graphs  # counts 3 and 4: no new graph
