"""A session with a local wsyncd: shared-memory buffers, registration, syncs, versions."""
import logging
import mmap
import os
import queue
import secrets
import sys
import threading
import time
import weakref

import grpc
import numpy as np

from wsync.v1 import types_pb2, wsync_pb2, wsync_pb2_grpc

# dtype name -> (wire enum, numpy storage dtype). bf16 is stored as uint16 bits.
DTYPES = {
    "fp32": (types_pb2.FLOAT32, np.float32),
    "bf16": (types_pb2.BFLOAT16, np.uint16),
    "fp16": (types_pb2.FLOAT16, np.float16),
    "fp8_e4m3": (types_pb2.FLOAT8_E4M3, np.uint8),
}
_ALIGN = 256
_ARENA = 256 << 20

log = logging.getLogger("wsync")

# Clients of this process, so that a forked child can disown its copies.
_clients = weakref.WeakSet()


def _disown_after_fork():
    """In a forked child: every Client copied from the parent shares the
    parent's connection (the same socket). Any gRPC traffic from the child on
    it (a call, closing the channel) would break the parent's connection and
    end its sessions, so the child's copies are disowned: they refuse every
    call and close() does nothing to the connection or the shared memory."""
    for c in list(_clients):
        c._owner_pid = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_after_fork)


def _is_cuda_tensor(x):
    return getattr(x, "is_cuda", False) is True


def _torch_dtypes():
    """wsync dtype name -> torch dtype (torch is an optional dependency)."""
    import torch
    out = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if hasattr(torch, "float8_e4m3fn"):
        out["fp8_e4m3"] = torch.float8_e4m3fn
    return out


def torch_dtype_name(dtype, what="tensor"):
    """The wsync dtype name of a torch dtype; ValueError naming `what` for
    one wsync does not sync."""
    names = {t: n for n, t in _torch_dtypes().items()}
    if dtype not in names:
        raise ValueError(f"{what}: dtype {dtype} is not one of {sorted(map(str, names))}")
    return names[dtype]


def cuda_buffer_spec(name, tensor, ready_event=None):
    """A BufferSpec for a torch CUDA tensor: the CUDA IPC handle of the base
    of the caching allocator's block that holds it (PyTorch's storage
    sharing), the tensor's byte offset in that block, its GPU's UUID, its
    shape, dtype and element strides."""
    import torch  # optional dependency
    dtype = torch_dtype_name(tensor.dtype, f"buffer {name!r}")
    storage = tensor.untyped_storage()
    # (device, handle, storage bytes, storage offset in the block, ...)
    shared = storage._share_cuda_()
    handle, storage_offset = shared[1], shared[3]
    offset = storage_offset + tensor.storage_offset() * tensor.element_size()
    span = 1 + sum((n - 1) * st for n, st in zip(tensor.shape, tensor.stride())) if tensor.numel() else 0
    nbytes = span * tensor.element_size()
    uuid = str(torch.cuda.get_device_properties(tensor.device).uuid)
    ipc = types_pb2.CudaIpc(ipc_handle=bytes(handle), device_uuid=uuid if uuid.startswith("GPU-") else "GPU-" + uuid)
    if ready_event is not None:
        ipc.event_handle = bytes(ready_event.ipc_handle())
    spec = types_pb2.BufferSpec(
        name=name, shape=list(tensor.shape), dtype=DTYPES[dtype][0],
        memory=types_pb2.MemoryRef(cuda_ipc=ipc, offset=offset, nbytes=nbytes))
    if not tensor.is_contiguous():
        spec.strides.extend(tensor.stride())
    return spec


def remove_stale_shm(pid=None):
    """Removes the shared memory that killed clients left in /dev/shm
    (`wsync-<pid>-*`, from this package and from the C++ client): that of
    process `pid`, or, by default, of every process that no longer runs.
    Returns the names removed."""
    removed = []
    for name in os.listdir("/dev/shm"):
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "wsync" or not parts[1].isdigit():
            continue
        owner = int(parts[1])
        if pid is not None and owner != pid:
            continue
        if pid is None:
            try:
                os.kill(owner, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # running, as another user
        try:
            os.unlink(os.path.join("/dev/shm", name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


class WsyncError(RuntimeError):
    """A wsyncd call failed. `code` is the grpc.StatusCode, `message` the daemon's words."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _grpc_code(number):
    """The grpc.StatusCode of a google.rpc.Code number."""
    return {c.value[0]: c for c in grpc.StatusCode}.get(number, grpc.StatusCode.UNKNOWN)


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise WsyncError(e.code(), e.details()) from None


class _Arena:
    """A POSIX shared-memory object carved into aligned arrays."""

    def __init__(self, size):
        self.name = f"/wsync-{os.getpid()}-{secrets.token_hex(6)}"
        path = "/dev/shm" + self.name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.size = size
        self.used = 0
        self.linked = True

    def take(self, nbytes):
        start = (self.used + _ALIGN - 1) // _ALIGN * _ALIGN
        if start + nbytes > self.size:
            return None
        self.used = start + nbytes
        return start

    def unlink(self):
        if self.linked:
            try:
                os.unlink("/dev/shm" + self.name)
            except FileNotFoundError:
                pass
            self.linked = False


class Client:
    """One attached session. Registrations live as long as the client: close()
    (or leaving a `with` block, or the process dying) releases them.

    Pause requests from the daemon (in-place targets, and staged commits) are
    acknowledged automatically after calling `on_pause(model, replica,
    version)` if given; use it to stop reading weights until `on_resume`.

    If the daemon goes away (a restart, a crash), the client notices the lost
    event stream and logs it (logger "wsync"). Replicas it had paused for a
    sync that never resumed may hold half old and half new bytes: they are
    reported through `on_resume(model, replica, version, poisoned=True)`, put
    in `poisoned` and dropped from `committed`. With `reconnect` (the default)
    it then attaches to the daemon again (retrying for `reconnect_timeout`
    seconds), re-registers every model and rank it had registered, and calls
    `on_reconnect(client)`. A poisoned replica is whole again once a version
    is committed to it.

    A Client belongs to the process that created it. A forked child (a
    DataLoader worker, say) must not use it: its calls raise WsyncError and its
    close() leaves the parent's connection alone. Create a new Client in the
    child if it needs one (with the "spawn" start method: gRPC does not
    support using it in a forked child).
    """

    def __init__(self, socket="/run/wsync/wsyncd.sock", name=None, on_pause=None, on_resume=None,
                 on_commit=None, connect_timeout=5.0, on_reconnect=None, reconnect=True,
                 reconnect_timeout=60.0, address=None, insecure=False, tls_ca=None, tls_cert=None,
                 tls_key=None):
        """socket: the local daemon's Unix socket. address: "host:port" of a
        daemon's TCP listener instead (wsyncd --listen); it needs TLS (tls_ca:
        the CA bundle that signed the daemon's certificate; tls_cert and
        tls_key: this client's certificate for mTLS, which is how the daemon
        knows who calls) unless `insecure` is set for a plaintext listener.
        Over TCP only host memory the daemon can open by name and no CUDA IPC
        are accepted: register buffers through the local socket."""
        if address is None and (insecure or tls_ca or tls_cert or tls_key):
            raise ValueError("insecure and tls_* apply to TCP connections: give address='host:port'")
        if address is not None and insecure and (tls_ca or tls_cert or tls_key):
            raise ValueError("insecure (plaintext) and tls_* cannot be combined")
        if address is not None and not insecure and not tls_ca:
            raise ValueError("a TCP connection needs tls_ca (or insecure=True for a plaintext listener)")
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key go together (mTLS)")
        self.socket, self.address, self._insecure = socket, address, insecure
        self._tls = [None if p is None else open(p, "rb").read() for p in (tls_ca, tls_key, tls_cert)]
        self.name = name or f"{os.path.basename(sys.argv[0]) or 'python'}-{os.getpid()}"
        self._on_pause, self._on_resume, self._on_commit = on_pause, on_resume, on_commit
        self._on_reconnect = on_reconnect
        self._reconnect, self._reconnect_timeout = reconnect, reconnect_timeout
        self._owner_pid = os.getpid()
        self._closed = False
        self._arenas = []
        self._arrays = {}  # id(array) -> (arena, offset, nbytes, dtype)
        self._registrations = []  # ("model" | "shards", request), in order, for re-registration
        self._paused = {}  # (model, replica) -> version: paused, not resumed yet
        self._lock = threading.Condition()
        self.committed = {}  # (model, replica) -> version
        self.poisoned = set()  # (model, replica) whose memory a lost sync may have half written
        self.failed = {}  # model -> (version, code, message) of the last sync that failed on it
        self.reconnects = 0
        self._attach(connect_timeout)
        _clients.add(self)
        # Shared memory is unlinked when the client closes or the process
        # exits (a SIGKILLed process leaves /dev/shm/wsync-<pid>-*).
        self._finalizer = weakref.finalize(self, Client._unlink_all, self._arenas, os.getpid())

    @staticmethod
    def _unlink_all(arenas, owner_pid):
        if os.getpid() == owner_pid:  # never from a forked child
            for arena in arenas:
                arena.unlink()

    def _check_owner(self):
        if self._owner_pid != os.getpid():
            raise WsyncError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"this wsync.Client belongs to another process (it was created before a fork); "
                             f"process {os.getpid()} must create its own Client")

    @property
    def target(self):
        """Where this client connects: "unix:<socket>" or the TCP address."""
        return self.address if self.address is not None else "unix:" + self.socket

    def _attach(self, timeout):
        # Each Client keeps its own connections: two clients of one process
        # with different certificates must not share a TLS session.
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
        if self.address is None or self._insecure:
            channel = grpc.insecure_channel(self.target, options=options)
        else:
            ca, key, cert = self._tls
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                 certificate_chain=cert)
            channel = grpc.secure_channel(self.address, creds, options=options)
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            channel.close()
            raise WsyncError(grpc.StatusCode.UNAVAILABLE,
                             f"no wsyncd answered at {self.target} within {timeout} s") from None
        stub = wsync_pb2_grpc.WsyncStub(channel)
        requests = queue.Queue()
        requests.put(wsync_pb2.AttachRequest(hello=wsync_pb2.Hello(client_name=self.name, pid=os.getpid())))
        events = stub.Attach(iter(requests.get, None))
        try:
            first = _call(next, events)
        except WsyncError:
            channel.close()
            raise
        self._channel, self.stub, self._requests, self._events = channel, stub, requests, events
        self.session_id = first.attached.session_id
        self.daemon_id = first.attached.daemon_id
        self._thread = threading.Thread(target=self._event_loop, args=(events,), daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- events
    def _event_loop(self, events):
        error = "the daemon closed the stream"
        try:
            for ev in events:
                self._handle(ev)
        except grpc.RpcError as e:
            error = f"{e.code().name}: {e.details()}"
        except Exception as e:  # a callback raised: the stream is gone all the same
            error = f"{type(e).__name__} in a callback: {e}"
        if self._closed or self._owner_pid != os.getpid() or events is not self._events:
            return
        self._lost(error)

    def _handle(self, ev):
        kind = ev.WhichOneof("event")
        if kind == "pause_requested":
            p = ev.pause_requested
            with self._lock:
                self._paused[(p.model_id, p.replica_id)] = p.version
            if self._on_pause:
                self._on_pause(p.model_id, p.replica_id, p.version)
            self._requests.put(wsync_pb2.AttachRequest(pause_ack=wsync_pb2.PauseAck(
                model_id=p.model_id, replica_id=p.replica_id, version=p.version)))
        elif kind == "resume":
            r = ev.resume
            with self._lock:
                self._paused.pop((r.model_id, r.replica_id), None)
                if r.poisoned:
                    self.poisoned.add((r.model_id, r.replica_id))
            if self._on_resume:
                self._on_resume(r.model_id, r.replica_id, r.version, r.poisoned)
        elif kind == "sync_failed":
            f = ev.sync_failed
            with self._lock:
                self.failed[f.model_id] = (f.version, f.code, f.message)
                self._lock.notify_all()
        elif kind == "version_committed":
            c = ev.version_committed
            with self._lock:
                self.committed[(c.model_id, c.replica_id)] = c.version
                self.poisoned.discard((c.model_id, c.replica_id))
                self._lock.notify_all()
            if self._on_commit:
                self._on_commit(c.model_id, c.replica_id, c.version, c.digest)

    def _lost(self, error):
        """The event stream ended while the client was open: the daemon went away."""
        with self._lock:
            paused, self._paused = self._paused, {}
            for key in paused:
                self.poisoned.add(key)
                self.committed.pop(key, None)
            self._lock.notify_all()
        log.warning("wsync client %r lost its session with wsyncd at %s (%s)%s", self.name, self.target,
                    error, "; replicas paused mid-sync are poisoned: " +
                    ", ".join(f"{m}/{r} (version {v})" for (m, r), v in paused.items()) if paused else "")
        for (m, r), v in paused.items():
            if self._on_resume:
                self._on_resume(m, r, v, True)
        if not self._reconnect:
            return
        deadline = time.monotonic() + self._reconnect_timeout
        delay = 0.1
        while not self._closed and self._owner_pid == os.getpid():
            try:
                old = self._channel
                self._attach(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                old.close()
                break
            except WsyncError as e:
                if time.monotonic() >= deadline:
                    log.error("wsync client %r could not re-attach to wsyncd at %s within %.0f s: %s",
                              self.name, self.target, self._reconnect_timeout, e)
                    return
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
        if self._closed:
            return
        self.reconnects += 1
        failed = self._reregister(deadline)
        log.warning("wsync client %r re-attached to wsyncd %r; re-registered %d model(s) and %d rank(s)%s",
                    self.name, self.daemon_id, sum(k == "model" for k, _ in self._registrations),
                    sum(k == "shards" for k, _ in self._registrations) - len(failed),
                    "; failed: " + "; ".join(failed) if failed else "")
        if self._on_reconnect:
            self._on_reconnect(self)

    def _reregister(self, deadline):
        """Replays every registration under the new session. A rank whose model
        is not there yet (its owner has not re-attached) is retried until
        `deadline`. Returns the errors left."""
        pending = list(self._registrations)
        errors = []
        while pending:
            errors, retry = [], []
            for kind, req in pending:
                req.session_id = self.session_id
                try:
                    _call(self.stub.RegisterModel if kind == "model" else self.stub.RegisterShards, req)
                except WsyncError as e:
                    (retry if e.code == grpc.StatusCode.NOT_FOUND else errors).append((kind, req, e))
            if not retry or time.monotonic() >= deadline or self._closed:
                errors += retry
                break
            pending = [(k, r) for k, r, _ in retry]
            time.sleep(0.2)
        return [f"{req.model_id}: {e.message}" for _, req, e in errors]

    # ------------------------------------------------------------- memory
    def empty(self, shape, dtype="bf16"):
        """A new array in shared memory (contents undefined: zero on first use)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
        np_dtype = DTYPES[dtype][1]
        nbytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        for arena in self._arenas:
            if arena.linked:
                off = arena.take(nbytes)
                if off is not None:
                    break
        else:
            arena = _Arena(max(_ARENA, nbytes + _ALIGN))
            self._arenas.append(arena)
            off = arena.take(nbytes)
        arr = np.ndarray(shape, dtype=np_dtype, buffer=arena.map, offset=off)
        self._arrays[id(arr)] = (arena, off, nbytes, dtype, arr)
        return arr

    def empty_torch(self, shape, dtype="bf16"):
        """A CPU torch tensor in shared memory (requires torch)."""
        import torch  # optional dependency
        arr = self.empty(shape, dtype)
        tdtype = _torch_dtypes()[dtype]
        t = torch.frombuffer(memoryview(arr).cast("B"), dtype=tdtype).view(*shape)
        self._arrays[id(t)] = self._arrays[id(arr)]
        return t

    def shared_copy(self, tensor, what="tensor"):
        """A CPU torch tensor in shared memory holding a copy of `tensor`."""
        import torch  # optional dependency
        shm = self.empty_torch(tuple(tensor.shape), torch_dtype_name(tensor.dtype, what))
        with torch.no_grad():
            shm.copy_(tensor)
        return shm

    def _memory(self, name, arr, ready_event=None):
        if _is_cuda_tensor(arr):
            return cuda_buffer_spec(name, arr, ready_event)
        entry = self._arrays.get(id(arr))
        if entry is None:
            raise ValueError(f"buffer {name!r} was not allocated by this client (use Client.empty)")
        arena, off, nbytes, dtype, _ = entry
        shape = list(arr.shape)
        return types_pb2.BufferSpec(
            name=name, shape=shape, dtype=DTYPES[dtype][0],
            memory=types_pb2.MemoryRef(host_shm=types_pb2.HostShm(name=arena.name), offset=off,
                                       nbytes=nbytes))

    # ------------------------------------------------------- registration
    def register_model(self, model_id, config=None, tensors=None, lora_adapters=None, fp8_block_scales=False,
                       fp8_scaling=None):
        """Declares a model from a Hugging Face config (dict) and/or explicit
        tensors [(name, shape, dtype)]. lora_adapters: [dict(base, a, b, rank,
        scaling[, convention="peft"])]. fp8_scaling: "block", "channel" or
        "tensor": add the FP8 scale tensors of the weights FP8 checkpoints
        quantize ("<weight>_scale_inv", one per 128 x 128 block, or
        "<weight>_scale", one per output channel or per tensor), so that
        generators can register float8_e4m3fn weights and syncs quantize into
        them (docs/fp8.md); fp8_block_scales=True is fp8_scaling="block".
        Every registrant of the model must pass the same."""
        scalings = {None: 0, "block": types_pb2.FP8_SCALING_BLOCK, "channel": types_pb2.FP8_SCALING_CHANNEL,
                    "tensor": types_pb2.FP8_SCALING_TENSOR}
        if fp8_scaling not in scalings:
            raise ValueError("fp8_scaling must be 'block', 'channel' or 'tensor', not %r" % (fp8_scaling,))
        req = wsync_pb2.RegisterModelRequest(session_id=self.session_id, model_id=model_id,
                                             fp8_block_scales=bool(fp8_block_scales),
                                             fp8_scaling=scalings[fp8_scaling])
        if config is not None:
            c = req.config
            c.family = config["model_type"]
            for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "intermediate_size", "vocab_size", "num_hidden_layers",
                        "moe_intermediate_size", "shared_expert_intermediate_size",
                        "decoder_sparse_step", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                        "qk_rope_head_dim", "v_head_dim", "first_k_dense_replace", "moe_layer_freq", "n_group"):
                if config.get(key) is not None:
                    setattr(c, key, int(config[key]))
            c.mlp_only_layers.extend(int(x) for x in config.get("mlp_only_layers") or [])
            c.num_experts = int(config.get("num_experts") or config.get("num_local_experts")
                                or config.get("n_routed_experts") or 0)
            c.num_shared_experts = int(config.get("n_shared_experts") or 0)
            c.router_bias = config.get("topk_method") == "noaux_tc"
            c.tie_word_embeddings = bool(config.get("tie_word_embeddings", False))
            c.attention_bias = bool(config.get("attention_bias", False))
        for name, shape, dtype in tensors or []:
            req.tensors.add(name=name, shape=list(shape), dtype=DTYPES[dtype][0])
        for a in lora_adapters or []:
            req.lora_adapters.add(
                base_tensor=a["base"], a_tensor=a["a"], b_tensor=a["b"], rank=a["rank"],
                scaling=a["scaling"],
                convention=types_pb2.DEEPSPEED if a.get("convention") == "deepspeed" else types_pb2.PEFT)
        self._check_owner()
        resp = _call(self.stub.RegisterModel, req)
        self._registrations.append(("model", req))
        return resp

    def register_shards(self, model_id, role, buffers, rank=None, recipe="", recipe_options=None,
                        replica=None, update_mode="staged", pieces=None, ready_event=None,
                        coordinator=""):
        """Registers one rank's buffers ({name: array}). role: "source" or
        "target"; rank: dict(tp=, tp_size=, pp=, pp_size=, ...); pieces:
        optional {name: [(tensor, (offsets, sizes), (offsets, sizes))]} for
        buffers outside the recipe.

        An array is either host shared memory from Client.empty/empty_torch,
        or a torch CUDA tensor, which the daemon opens through CUDA IPC (a
        colocated GPU sync; every buffer of a model must then be on GPUs).
        ready_event: an optional torch.cuda.Event(interprocess=True); the
        daemon waits on it before reading these buffers, so a trainer
        records it after each optimizer step and needs no synchronize().
        rank: this process's place in its engine's layout (docs/api.md):
        rank and world_size, the dense grid tp/cp/dp/pp and the expert grid
        etp/ep/edp, each with its *_size. coordinator: "host:port" of the
        daemon that coordinates this model's multi-node syncs ("" = this
        daemon)."""
        req = wsync_pb2.RegisterShardsRequest(
            session_id=self.session_id, model_id=model_id,
            role=types_pb2.SOURCE if role == "source" else types_pb2.TARGET,
            replica_id=replica or "",
            update_mode=types_pb2.IN_PLACE if update_mode == "in_place" else types_pb2.STAGED,
            coordinator=coordinator)
        for k, v in (rank or {}).items():
            setattr(req.rank, k, int(v))
        req.recipe.name = recipe
        for k, v in (recipe_options or {}).items():
            req.recipe.options[k] = str(v)
        used = set()
        for name, arr in buffers.items():
            spec = self._memory(name, arr, ready_event)
            for tensor, (co, cs), (so, ss) in (pieces or {}).get(name, []):
                spec.pieces.add(tensor=tensor, canonical=types_pb2.Box(offsets=co, sizes=cs),
                                shard=types_pb2.Box(offsets=so, sizes=ss))
            req.buffers.append(spec)
            if not _is_cuda_tensor(arr):
                used.add(id(self._arrays[id(arr)][0]))
        self._check_owner()
        resp = _call(self.stub.RegisterShards, req)
        self._registrations.append(("shards", req))
        if not self._reconnect:
            for arena in self._arenas:
                if id(arena) in used:
                    arena.unlink()  # the daemon has mapped it: nothing is left in /dev/shm
        return resp

    # --------------------------------------------------------------- sync
    def sync(self, model_id, version, lora=None, replicas=None, deadline_ms=0, bucket_bytes=0,
             progress=None, lora_bases=None):
        """Syncs `version`; returns the SyncResult. progress: None (a bar on a
        terminal), False (silent) or a callable(ProgressUpdate)."""
        modes = {None: types_pb2.NONE, "none": types_pb2.NONE, "merge": types_pb2.MERGE,
                 "adapter_only": types_pb2.ADAPTER_ONLY, "unmerge": types_pb2.UNMERGE}
        if lora not in modes:
            raise ValueError(f"lora={lora!r}: expected one of none, merge, adapter_only, unmerge")
        req = wsync_pb2.SyncRequest(model_id=model_id, version=version, deadline_ms=deadline_ms,
                                    max_bucket_bytes=bucket_bytes, target_replicas=replicas or [])
        req.lora.mode = modes[lora]
        req.lora.base_tensors.extend(lora_bases or [])
        self._check_owner()
        if progress is None:
            progress = _bar if sys.stderr.isatty() else False
        result = None
        try:
            for msg in self.stub.Sync(req):
                if msg.HasField("progress") and progress:
                    progress(msg.progress)
                if msg.HasField("result"):
                    result = msg.result
        except grpc.RpcError as e:
            if progress is _bar:
                sys.stderr.write("\n")
            raise WsyncError(e.code(), e.details()) from None
        if progress is _bar:
            sys.stderr.write("\n")
        return result

    def wait_version(self, model_id, replica, min_version, timeout_ms=0):
        self._check_owner()
        return _call(self.stub.WaitVersion, wsync_pb2.WaitVersionRequest(
            model_id=model_id, replica_id=replica, min_version=min_version, timeout_ms=timeout_ms))

    def wait_committed(self, model_id, replica, version, timeout=600.0):
        """Waits, on this session's events, until `version` (or a later one) is
        committed for `replica` of `model_id`, which this session registered.
        Raises WsyncError as soon as the daemon reports that the sync of
        exactly `version` failed, and TimeoutError after `timeout` seconds."""
        import time
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self.committed.get((model_id, replica), 0) >= version:
                    return self.committed[(model_id, replica)]
                f = self.failed.get(model_id)
                if f is not None and f[0] == version:
                    raise WsyncError(_grpc_code(f[1]), f"sync of version {version} failed: {f[2]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"replica {replica!r} of model {model_id!r} is at version "
                                       f"{self.committed.get((model_id, replica), 0)}, not {version}, after "
                                       f"{timeout} s")
                self._lock.wait(left)

    def cancel(self, model_id, version=0):
        self._check_owner()
        return _call(self.stub.CancelSync, wsync_pb2.CancelSyncRequest(model_id=model_id, version=version))

    def describe_layout(self, model_id, recipe, rank=None, recipe_options=None):
        """Where a sync would put each canonical element for one process:
        {"buffers": {name: {"shape": [...], "pieces": [(tensor, (offsets,
        sizes), (offsets, sizes)), ...]}}, "tensors": {name: shape}}, the
        pieces' boxes being in the canonical tensor and in the buffer."""
        req = wsync_pb2.DescribeLayoutRequest(model_id=model_id)
        req.recipe.name = recipe
        for k, v in (recipe_options or {}).items():
            req.recipe.options[k] = str(v)
        for k, v in (rank or {}).items():
            setattr(req.rank, k, int(v))
        self._check_owner()
        resp = _call(self.stub.DescribeLayout, req)
        box = lambda b: (list(b.offsets), list(b.sizes))  # noqa: E731
        return {"buffers": {b.name: {"shape": list(b.shape),
                                     "pieces": [(p.tensor, box(p.canonical), box(p.shard)) for p in b.pieces]}
                            for b in resp.buffers},
                "tensors": {t.name: list(t.shape) for t in resp.tensors}}

    def status(self):
        self._check_owner()
        return _call(self.stub.GetStatus, wsync_pb2.GetStatusRequest())

    def unregister(self, model_id, replica=None):
        self._check_owner()
        self._registrations = [(k, r) for k, r in self._registrations
                               if r.model_id != model_id or (replica and getattr(r, "replica_id", "") != replica)]
        return _call(self.stub.Unregister, wsync_pb2.UnregisterRequest(
            session_id=self.session_id, model_id=model_id, replica_id=replica or ""))

    # ------------------------------------------------------------ closing
    def close(self):
        """Ends the session: the daemon releases its registrations. In a forked
        child it only forgets the parent's client."""
        if self._closed:
            return
        self._closed = True
        if self._owner_pid != os.getpid():
            return
        self._requests.put(None)
        self._channel.close()
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _bar(p):
    total = max(p.bytes_total, 1)
    frac = p.bytes_done / total
    width = 30
    sys.stderr.write("\r[{}{}] {:5.1f}% {:8.1f} MiB/s {} ".format(
        "#" * int(frac * width), "." * (width - int(frac * width)), 100 * frac,
        p.rate_bytes_per_s / 2**20, types_pb2.SyncPhase.Name(p.phase)))
    sys.stderr.flush()
