"""Register a vLLM worker's model parameters with wsyncd as one target process.

    import wsync, wsync.vllm
    client = wsync.Client()
    wsync.vllm.register(client, model, "policy", replica="gen-0")   # in each worker

This is the worker-side building block of the vLLM integration: it reads the
worker's place from vLLM's own parallel state (tensor, pipeline and data
parallel groups) and from each MoE layer's own parallel config (expert rank,
expert tensor-parallel rank, expert placement), never recomputing them, and
registers every parameter under its vLLM name in the `vllm` recipe.

Before registering, `probe` verifies the recipe against vLLM's own loaders:
it asks the daemon where a sync would put each canonical element
(DescribeLayout), feeds vLLM's `load_weights` probe tensors whose values
encode each element's canonical position (its index and its tensor, in
24-bit digits, one pass per digit) into fp32 scratch tensors standing in for
the parameters, a chunk of parameters at a time, and compares every element
with the layout. A parameter vLLM lays out differently, or transforms
in a way that is not a permutation, refuses the registration with
LayoutMismatch naming the parameter and its first wrong element. The probe
needs about 1 GiB of scratch (a chunk) and one load_weights pass per digit
over the whole model; `register(probe_layout=False)` skips it.

Parameters the probe refuses can take the loader path instead
(`register(on_mismatch="loader")`): the daemon writes the canonical tensors
they are made of into staging buffers the worker owns, and the worker feeds
those to vLLM's own load_weights after the commit (Registration.load).
FP8 weights and their block scales are probed like the others (the scratch
is fp32 whatever the parameter's dtype). An FP8 weight and its
`weight_scale_inv` (or, with per-channel and per-tensor scales,
`weight_scale`) take the loader path together when either differs: the
daemon quantizes each canonical weight whole into an FP8 staging buffer and
writes its scales into an fp32 one, and load_weights gets them as an FP8
checkpoint would give them.

wsync.vllm_engine is the "wsync" weight-transfer backend built on these.

GPU parameters are registered in place through CUDA IPC; CPU parameters are
moved into the client's shared memory (`param.data` is replaced by a
shared-memory tensor holding the same values).
"""


from wsync.client import torch_dtype_name


def register_backend():
    """Registers the "wsync" weight-transfer backend with vLLM, worker side
    (wsync.vllm_engine) and trainer side (wsync.vllm_trainer), lazily: vLLM
    imports them when a config names the backend. Idempotent. vLLM calls it
    through this package's vllm.general_plugins entry point."""
    from vllm.distributed.weight_transfer.factory import (WeightTransferEngineFactory,
                                                          WeightTransferTrainerFactory)
    if "wsync" not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine("wsync", "wsync.vllm_engine", "WsyncWeightTransferEngine")
    if "wsync" not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine("wsync", "wsync.vllm_trainer", "WsyncTrainerEngine")


def _routed_experts(model):
    """[(module name, RoutedExperts)] of the model's MoE layers."""
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ == "RoutedExperts"]


def coordinates(model):
    """This worker's rank dict for Client.register_shards."""
    from vllm.distributed import parallel_state as ps
    tp, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    pp_group, dp_group = ps.get_pp_group(), ps.get_dp_group()
    pp, pp_size = pp_group.rank_in_group, pp_group.world_size
    dp, dp_size = dp_group.rank_in_group, dp_group.world_size
    coords = dict(rank=(dp * pp_size + pp) * tp_size + tp, world_size=tp_size * dp_size * pp_size,
                  tp=tp, tp_size=tp_size, pp=pp, pp_size=pp_size, dp=dp, dp_size=dp_size)
    experts = _routed_experts(model)
    if experts:
        first, mpc = experts[0][0], experts[0][1].moe_config.moe_parallel_config
        for name, e in experts[1:]:
            other = e.moe_config.moe_parallel_config
            places = [(c.ep_rank, c.ep_size, c.tp_rank, c.tp_size) for c in (mpc, other)]
            if places[0] != places[1]:
                raise ValueError(f"MoE layers {first!r} and {name!r} disagree on this worker's place "
                                 f"(ep_rank, ep_size, tp_rank, tp_size): {places[0]} vs {places[1]}")
        coords.update(ep=mpc.ep_rank, ep_size=mpc.ep_size, etp=mpc.tp_rank, etp_size=mpc.tp_size)
    return coords


def recipe_options(model):
    """The vllm recipe options that describe this model: expert placement
    (as each MoE layer reports it) and the expert parameter names."""
    options = {}
    experts = _routed_experts(model)
    if experts:
        placements = {e.expert_placement_strategy for _, e in experts}
        if len(placements) != 1:
            raise ValueError(f"MoE layers use different expert placements: {sorted(placements)}; the vllm "
                             "recipe needs one placement for the whole model")
        options["expert_placement"] = placements.pop()
        routed = any(".routed_experts." in n for n, _ in model.named_parameters())
        options["moe_names"] = "routed_experts" if routed else "legacy"
    return options


class LayoutMismatch(ValueError):
    """vLLM's loaders put canonical elements somewhere the recipe does not."""


def _box(offsets, sizes):
    return tuple(slice(o, o + n) for o, n in zip(offsets, sizes))


def probe(client, model, model_id):
    """Verifies the vllm recipe for this worker against vLLM's own
    load_weights (see the module docstring). Returns the seconds it took;
    raises LayoutMismatch naming the first parameter that differs."""
    report = probe_report(client, model, model_id)
    if report.mismatches:
        first = next(iter(report.mismatches.values()))
        more = len(report.mismatches) - 1
        raise LayoutMismatch(first + (f" (and {more} more parameter(s) differ)" if more else ""))
    return report.seconds


class ProbeReport:
    """What `probe_report` found. seconds: its cost; mismatches: {parameter:
    message} for every parameter vLLM's loaders lay out differently from the
    recipe (in parameter order); feeds: {parameter: [canonical tensors]}, the
    checkpoint tensors the recipe puts into each parameter."""

    def __init__(self, seconds, mismatches, feeds):
        self.seconds, self.mismatches, self.feeds = seconds, mismatches, feeds


def probe_report(client, model, model_id, layout=None, chunk_bytes=1 << 30):
    """Runs the probe over every parameter without stopping at the first
    mismatch. Structural disagreements (a parameter missing on either side, a
    shape, an unsupported dtype, a loader writing into a parameter the recipe
    does not feed from that tensor) still raise LayoutMismatch: no parameter
    can be loaded then.

    Parameters are probed a chunk at a time (about `chunk_bytes` of fp32
    scratch each), so the probe never holds a second copy of the model: the
    chunk's parameters point at fp32 scratch tensors, every other parameter at
    a zero-size stand-in that raises if a loader writes into it, and
    load_weights is fed the canonical tensors the recipe puts into the
    chunk."""
    import math
    import time

    import torch
    start = time.monotonic()
    if layout is None:
        layout = client.describe_layout(model_id, "vllm", coordinates(model), recipe_options(model))
    params = _weights(model)
    for name in layout["buffers"]:
        if name not in params:
            raise LayoutMismatch(f"the vllm recipe has a parameter {name!r} that this vLLM model does not")
    for name, p in params.items():
        if name not in layout["buffers"]:
            raise LayoutMismatch(f"parameter {name!r} of this vLLM model is not in the vllm recipe")
        if list(p.shape) != layout["buffers"][name]["shape"]:
            raise LayoutMismatch(f"parameter {name!r} has shape {list(p.shape)}, the vllm recipe "
                                 f"{layout['buffers'][name]['shape']}")
        if p.dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn):
            raise LayoutMismatch(f"parameter {name!r}: the probe does not handle dtype {p.dtype}")
    tensors = sorted(layout["tensors"].items())
    slot = {name: i for i, (name, _) in enumerate(tensors)}
    feeds = {n: sorted({t for t, _, _ in layout["buffers"][n]["pieces"]}) for n in params}
    n_max = max(math.prod(shape) for _, shape in tensors)
    # The scratch is fp32, which holds integers up to 2^24 exactly, whatever
    # the parameters' own dtype. Element e of canonical tensor t is told apart
    # by the digits of e+1 (index passes) and of slot(t)+1 (slot passes); an
    # element no loader wrote reads 0 in every pass.
    bits = 24
    mask = (1 << bits) - 1
    passes = [("index", k) for k in range(math.ceil(math.log2(n_max + 1) / bits))] + \
             [("slot", k) for k in range(math.ceil(math.log2(len(tensors) + 1) / bits))]
    device = next(iter(params.values())).device
    index_dtype = torch.int32 if n_max < (1 << 31) - 1 else torch.int64

    def digits(kind, k, tensor):
        """Pass (kind, k)'s digit of every element of a canonical tensor, in fp32."""
        shape = tuple(layout["tensors"][tensor])
        if kind == "slot":
            return torch.full(shape, float(((slot[tensor] + 1) >> (bits * k)) & mask), dtype=torch.float32,
                              device=device)
        flat = torch.arange(1, math.prod(shape) + 1, dtype=index_dtype, device=device)
        return ((flat >> (bits * k)) & mask).to(torch.float32).reshape(shape)

    # Parameters fed from a common canonical tensor are probed together.
    group = {n: n for n in params}

    def root(n):
        while group[n] != n:
            group[n] = group[group[n]]
            n = group[n]
        return n

    first_fed = {}
    for n in params:
        for t in feeds[n]:
            group[root(n)] = root(first_fed.setdefault(t, n))
    groups = {}
    for n in params:
        groups.setdefault(root(n), []).append(n)
    chunks, size = [[]], 0
    for members in groups.values():
        nbytes = sum(params[n].numel() * 4 for n in members)
        if chunks[-1] and size + nbytes > chunk_bytes:
            chunks.append([])
            size = 0
        chunks[-1].extend(members)
        size += nbytes

    found = {}
    saved = {n: p.data for n, p in params.items()}
    stand_in = {n: torch.zeros((), dtype=d.dtype, device=d.device).expand(d.shape) for n, d in saved.items()}
    try:
        for chunk in chunks:
            for n, p in params.items():
                p.data = stand_in[n]
            scratch = {n: torch.zeros(saved[n].shape, dtype=torch.float32, device=saved[n].device) for n in chunk}
            for n in chunk:
                params[n].data = scratch[n]
            fed = sorted({t for n in chunk for t in feeds[n]})
            for kind, k in passes:
                for d in scratch.values():
                    d.zero_()
                fed_digits = {t: digits(kind, k, t) for t in fed}
                try:
                    model.load_weights((t, fed_digits[t]) for t in fed)
                except RuntimeError as e:
                    if "written-to tensor" not in str(e) and "single memory location" not in str(e):
                        raise
                    raise LayoutMismatch(
                        f"vLLM's load_weights wrote into a parameter other than {chunk[0]!r}"
                        f"{f' ... {chunk[-1]!r}' if len(chunk) > 1 else ''} while loading the checkpoint "
                        f"tensors the vllm recipe puts there ({', '.join(fed[:3])}"
                        f"{', ...' if len(fed) > 3 else ''}): vLLM loads them into parameters the recipe "
                        "does not") from None
                for name in chunk:
                    if name in found:
                        continue
                    got, pieces = scratch[name], layout["buffers"][name]["pieces"]
                    expect = [(_box(so, ss), fed_digits[t][_box(co, cs)].reshape(ss)) for t, (co, cs), (so, ss)
                              in pieces]
                    if all(torch.equal(got[sb], e) for sb, e in expect):
                        # What no piece covers (padding) must be untouched.
                        for sb, _ in expect:
                            got[sb].zero_()
                        if not got.any():
                            continue
                        want = torch.zeros_like(got)
                    else:
                        want = torch.zeros_like(got)
                        for sb, e in expect:
                            want[sb] = e
                    at = tuple(int(i) for i in (got != want).nonzero()[0])
                    found[name] = (
                        f"parameter {name!r} element {at}: vLLM's load_weights put {float(got[at])!r} there "
                        f"in probe pass {kind} {k} ({bits}-bit digits), where the vllm recipe puts "
                        f"{float(want[at])!r} ({_describe(at, layout['buffers'][name])})")
                del fed_digits
            del scratch
    finally:
        for n, p in params.items():
            p.data = saved[n]
    mismatches = {n: found[n] for n in params if n in found}
    return ProbeReport(time.monotonic() - start, mismatches, feeds)


def _describe(at, buf):
    """Which canonical element the recipe puts at `at` of a buffer: the
    piece's two boxes hold the same elements in the same order."""
    for tensor, (co, cs), (so, ss) in buf["pieces"]:
        if all(o <= a < o + n for a, o, n in zip(at, so, ss)):
            flat = 0
            for a, o, n in zip(at, so, ss):
                flat = flat * n + (a - o)
            idx = []
            for n in reversed(cs):
                idx.append(flat % n)
                flat //= n
            return f"canonical {tensor!r} element {tuple(o + i for o, i in zip(co, reversed(idx)))}"
    return "no canonical element: padding, left untouched"


class Registration:
    """One worker's registration. in_place: {parameter: tensor} the daemon
    writes directly; loader: {parameter: [canonical tensors]} for parameters
    that take the loader path; staging: {canonical tensor: tensor}, the
    worker-owned buffers the daemon writes those canonical tensors into, whole
    and in checkpoint layout."""

    def __init__(self, in_place, loader, staging):
        self.in_place, self.loader, self.staging = in_place, loader, staging

    def paths(self):
        """{parameter: "in_place" | "loader"}."""
        out = {n: "in_place" for n in self.in_place}
        out.update({n: "loader" for n in self.loader})
        return out

    def load(self, model):
        """Feeds the staging buffers to vLLM's own load_weights, tensor by
        tensor (the loader path). Call it after the version is committed and
        before generation resumes. Returns the number of tensors loaded."""
        if self.staging:
            model.load_weights(iter(self.staging.items()))
        return len(self.staging)


# Staging buffers are named after the canonical tensor they hold.
LOADER_PREFIX = "loader:"


# The attention and kv-cache scales vLLM gives FP8 models: not weights (no
# trainer holds them), so they keep vLLM's values and are not registered.
# The scale parameters of an FP8 weight "X.weight" (docs/fp8.md): block
# scales, then per-channel or per-tensor scales.
FP8_SCALE_SUFFIXES = ("_scale_inv", "_scale")
ATTENTION_SCALES = (".attn.q_scale", ".attn.k_scale", ".attn.v_scale", ".attn.prob_scale")
# What MLA attention layers derive from kv_b_proj after loading (parameters
# vLLM adds in process_weights_after_loading): refresh_derived recomputes
# them after a sync instead.
MLA_DERIVED = (".W_UV", ".W_UK_T", ".W_UK_T_dcp_qrep", ".W_K", ".W_K_scale", ".W_V", ".W_V_scale")


def _weights(model):
    """{name: parameter} of the model's weights: what the vllm recipe
    describes, without the parameters vLLM derives or keeps for itself."""
    return {n: p for n, p in model.named_parameters() if not n.endswith(ATTENTION_SCALES + MLA_DERIVED)}


def register(client, model, model_id, replica, update_mode="staged", coordinator="", probe_layout=True,
             on_mismatch="refuse", probe_chunk_bytes=1 << 30):
    """Registers this worker's parameters as one process of target replica
    `replica` of `model_id`, after `probe` (unless probe_layout=False).

    on_mismatch: what happens to a parameter the probe finds vLLM lays out
    differently from the recipe. "refuse" (the default) raises LayoutMismatch
    and registers nothing; "loader" sends it through the loader path: the
    daemon writes the canonical tensors it is made of, whole, into staging
    buffers this worker owns (same device as the parameters), and
    Registration.load feeds them to vLLM's load_weights after each commit.
    probe_chunk_bytes bounds the probe's fp32 scratch (see probe_report).
    Returns a Registration."""
    import logging

    import torch
    if on_mismatch not in ("refuse", "loader"):
        raise ValueError(f"on_mismatch={on_mismatch!r}: expected 'refuse' or 'loader'")
    coords, options = coordinates(model), recipe_options(model)
    loader = {}
    layout = None
    if probe_layout:
        layout = client.describe_layout(model_id, "vllm", coords, options)
        report = probe_report(client, model, model_id, layout, chunk_bytes=probe_chunk_bytes)
        if report.mismatches and on_mismatch == "refuse":
            first = next(iter(report.mismatches.values()))
            more = len(report.mismatches) - 1
            raise LayoutMismatch(first + (f" (and {more} more parameter(s) differ)" if more else ""))
        loader = {n: report.feeds[n] for n in report.mismatches}
        # An FP8 weight and its scales (block: "_scale_inv"; channel or
        # tensor: "_scale") take one path: the daemon writes a weight's
        # scales as it quantizes the weight.
        params = _weights(model)
        for n in list(loader):
            weight = next((n[:-len(s)] for s in FP8_SCALE_SUFFIXES if n.endswith(s)), n)
            for scales in (weight + s for s in FP8_SCALE_SUFFIXES):
                if weight in params and scales in params and params[weight].dtype == torch.float8_e4m3fn:
                    for m in (weight, scales):
                        loader.setdefault(m, report.feeds[m])
    in_place, pieces, staging = {}, {}, {}
    params = _weights(model)
    for name, p in params.items():
        if name in loader:
            continue
        if p.is_cuda:
            torch_dtype_name(p.dtype, f"parameter {name!r}")
            in_place[name] = p.data
        else:
            shm = client.shared_copy(p.data, f"parameter {name!r}")
            p.data = shm
            in_place[name] = shm
        if loader:
            pieces[name] = layout["buffers"][name]["pieces"]
    for name, feeds in loader.items():
        p = params[name]
        for tensor in feeds:
            if tensor in staging:
                continue
            shape = tuple(layout["tensors"][tensor])
            if p.is_cuda:
                buf = torch.empty(shape, dtype=p.dtype, device=p.device)
            else:
                buf = client.empty_torch(shape, torch_dtype_name(p.dtype, f"parameter {name!r}"))
            staging[tensor] = buf
            pieces[LOADER_PREFIX + tensor] = [(tensor, ([0] * len(shape), list(shape)), ([0] * len(shape), list(shape)))]
    buffers = dict(in_place)
    buffers.update({LOADER_PREFIX + t: b for t, b in staging.items()})
    if loader:
        # Explicit pieces: the recipe's for parameters written in place, the
        # whole canonical tensor for each staging buffer.
        client.register_shards(model_id, "target", buffers, rank=coords, replica=replica,
                               update_mode=update_mode, coordinator=coordinator, pieces=pieces)
    else:
        client.register_shards(model_id, "target", buffers, rank=coords, recipe="vllm", recipe_options=options,
                               replica=replica, update_mode=update_mode, coordinator=coordinator)
    reg = Registration(in_place, loader, staging)
    logging.getLogger("wsync").info(
        "model %r replica %r rank %d: %d parameter(s) written in place, %d through the loader path%s",
        model_id, replica, coords["rank"], len(in_place), len(loader),
        f" ({', '.join(loader)}; {len(staging)} staging tensor(s))" if loader else "")
    return reg


def refresh_derived(model):
    """Recomputes the tensors vLLM derives from weights after loading them,
    for the layers a sync can make stale: multi-head latent attention layers
    (DeepSeek family) split kv_b_proj into W_UK_T and W_UV in their
    process_weights_after_loading, and keep using those after kv_b_proj
    changes. Call it after a version is committed and before generation
    resumes (WorkerSession.update does). vLLM updates the tensors in place,
    so captured CUDA graphs stay valid. Returns the number of layers
    refreshed."""
    import torch
    dtype = None
    try:
        from vllm.config import get_current_vllm_config
        mc = get_current_vllm_config().model_config
        dtype = mc.dtype if mc is not None else None
    except Exception:  # no current config outside vLLM's context
        dtype = None
    n = 0
    for name, m in model.named_modules():
        if type(m).__name__ != "MLAAttention" or not hasattr(m, "kv_b_proj"):
            continue
        w = getattr(m.kv_b_proj, "weight", None)
        if w is None or w.numel() == 0:
            raise RuntimeError(f"{name}: vLLM released kv_b_proj after deriving W_UK/W_UV from it (its AMX MLA "
                               "path); wsync cannot update this model's attention")
        act = dtype if dtype is not None else (w.dtype if w.dtype.is_floating_point and w.element_size() > 1
                                               else torch.bfloat16)
        m.process_weights_after_loading(act)
        n += 1
    return n


class WorkerSession:
    """One vLLM worker's side of the integration: what the "wsync"
    weight-transfer backend (wsync.vllm_engine) and the worker extension
    (WsyncWorkerExtension, for vLLM versions without the plug-in API) both
    run. Not thread-safe: the worker calls it from its own thread.

    A worker registers once (`init`). Each update, `update(version)` waits
    until the daemon has committed `version` for the replica, on this
    worker's event stream, then feeds the loader-path parameters (if any) to
    vLLM's load_weights. Pausing generation around the commit is an
    engine-level action that the trainer side drives (wsync.vllm_trainer);
    the daemon's own pause requests to this worker are acknowledged by the
    client."""

    def __init__(self, model):
        self.model = model
        self.client = None
        self.registration = None
        self.model_id = self.replica = None

    def init(self, model_id, replica, socket="/run/wsync/wsyncd.sock", update_mode="staged", probe=True,
             on_mismatch="refuse", probe_chunk_mib=1024):
        """Attaches to the node's wsyncd and registers this worker's
        parameters as one process of `replica`. Returns {"in_place": n,
        "loader": [parameters]}."""
        import os

        from wsync.client import Client
        if self.client is not None:
            raise RuntimeError(f"wsync: this worker is already registered as replica {self.replica!r} of "
                               f"model {self.model_id!r}")
        client = Client(socket=socket, name=f"vllm-worker-{os.getpid()}")
        try:
            self.registration = register(client, self.model, model_id, replica, update_mode=update_mode,
                                         probe_layout=probe, on_mismatch=on_mismatch,
                                         probe_chunk_bytes=probe_chunk_mib << 20)
        except BaseException:
            client.close()
            raise
        self.client, self.model_id, self.replica = client, model_id, replica
        return {"in_place": len(self.registration.in_place), "loader": sorted(self.registration.loader)}

    def update(self, version, timeout_ms=600000):
        """Returns once `version` is committed for this replica and the
        loader-path parameters are loaded. Raises WsyncError when the daemon
        reports that this version's sync failed, TimeoutError after
        timeout_ms."""
        if self.client is None:
            raise RuntimeError("wsync weight transfer: the worker was not initialised (init_transfer_engine / "
                               "wsync_init was not called)")
        self.client.wait_committed(self.model_id, self.replica, version, timeout_ms / 1000.0)
        self.registration.load(self.model)
        refresh_derived(self.model)

    def paths(self):
        """{parameter: "in_place" | "loader"} of this worker's registration."""
        return self.registration.paths() if self.registration is not None else {}

    def shutdown(self):
        if self.client is not None:
            self.client.close()
            self.client = None
            self.registration = None


class WsyncWorkerExtension:
    """vLLM worker extension, for vLLM versions without the weight-transfer
    plug-in API (and for users who drive workers through collective_rpc):

        llm = LLM(..., worker_extension_cls="wsync.vllm.WsyncWorkerExtension")
        llm.collective_rpc("wsync_init", kwargs={"model_id": "policy", "replica": "gen-0"})
        # each step, after pausing generation and while the trainer syncs v:
        llm.collective_rpc("wsync_update", kwargs={"version": v})

    Uses the same WorkerSession as the "wsync" backend."""

    def _wsync_session(self):
        session = getattr(self, "_wsync", None)
        if session is None:
            session = self._wsync = WorkerSession(self.model_runner.model)
        return session

    def wsync_init(self, model_id, replica, socket="/run/wsync/wsyncd.sock", update_mode="staged", probe=True,
                   on_mismatch="refuse", probe_chunk_mib=1024):
        return self._wsync_session().init(model_id, replica, socket=socket, update_mode=update_mode,
                                          probe=probe, on_mismatch=on_mismatch, probe_chunk_mib=probe_chunk_mib)

    def wsync_update(self, version, timeout_ms=600000):
        self._wsync_session().update(version, timeout_ms)
        _synchronize(self._wsync.model)

    def wsync_paths(self):
        return self._wsync_session().paths()

    def wsync_shutdown(self):
        self._wsync_session().shutdown()


def _synchronize(model):
    """Waits for the device's queued work (the loader path's copies) when the
    model lives on a GPU."""
    import torch
    p = next(model.parameters(), None)
    if p is not None and p.is_cuda:
        torch.cuda.synchronize(p.device)
