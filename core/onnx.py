"""ONNX files -> torch modules that run on ComfyUI's device.

The weights are read from the released ONNX file and the graph is mapped onto torch modules by
onnx2torch (a well-kept converter; it matched onnxruntime within ~1e-5 on the fixture models).
What this module adds: a signature reader that tells truncated / non-ONNX files apart with a clear
message, insightface's input-normalisation rule, and a batching check (some exports fold or drop
the batch axis of their outputs).

External data (tensors stored in a separate file, ``onnx.save_model(..., save_as_external_data=True)``):
the file must sit beside the model, inside its folder (a relative location, no '..', no absolute path:
:func:`visage.core.paths.check_name`). It is read from there, never from the server's working
directory, for both engines: :func:`load_proto` loads it into the proto, and onnxruntime gets the
serialized proto with the data inside.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .errors import ModelFileInvalid, VisageError
from .paths import NameRefused, join_inside

log = logging.getLogger("visage")

Dim = Union[int, str, None]


@dataclass(frozen=True)
class OnnxSignature:
    path: str
    inputs: Tuple[Tuple[str, Tuple[Dim, ...]], ...]
    outputs: Tuple[Tuple[str, Tuple[Dim, ...]], ...]
    initializer_names: Tuple[str, ...]
    first_node_names: Tuple[str, ...]
    first_node_ops: Tuple[str, ...]

    @property
    def input_shape(self) -> Tuple[Dim, ...]:
        return self.inputs[0][1] if self.inputs else ()

    def input_hw(self) -> Tuple[Optional[int], Optional[int]]:
        s = self.input_shape
        if len(s) != 4:
            return None, None
        h = s[2] if isinstance(s[2], int) and s[2] > 0 else None
        w = s[3] if isinstance(s[3], int) and s[3] > 0 else None
        return h, w

    def output_dim(self, i: int = 0, axis: int = -1) -> Optional[int]:
        if i >= len(self.outputs):
            return None
        s = self.outputs[i][1]
        if not s:
            return None
        d = s[axis]
        return d if isinstance(d, int) and d > 0 else None

    def insightface_mean_std(self, default: Tuple[float, float]) -> Tuple[float, float]:
        """insightface's rule: a graph that starts with Sub and Mul nodes normalises itself."""
        find_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in self.first_node_names)
        find_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in self.first_node_names)
        if any(n == "bn_data" for n in self.first_node_names[:3]):
            find_sub = find_mul = True
        if find_sub and find_mul:
            return 0.0, 1.0
        return default


def value_dims(value_info) -> Tuple[Dim, ...]:
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _graph_tensors(graph):
    """Every TensorProto of a graph and its subgraphs (initializers, sparse initializers, attributes)."""
    for t in graph.initializer:
        yield t
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _graph_tensors(a.g)
            for g in a.graphs:
                yield from _graph_tensors(g)


def external_data_files(model, path: str) -> List[str]:
    """Full paths of the external-data files ``model`` (read from ``path``) names, each checked: it must
    sit beside the model inside its folder and exist. Anything else raises ModelFileInvalid, before any
    read, without saying what is (or is not) at a refused location."""
    import onnx

    base = os.path.dirname(os.path.abspath(path))
    expected = "an ONNX model whose external data files sit beside it, in its folder"
    files: List[str] = []
    for t in _graph_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        try:
            full = join_inside(base, loc, "external-data location")
        except NameRefused as e:
            raise ModelFileInvalid(
                path,
                f"tensor '{t.name[:80]}' keeps its data outside the model's folder ({e.reason})",
                expected,
                fix="use a model that stores its weights inside the .onnx file, or one whose data file is "
                "named by a plain relative name and placed beside it",
            ) from None
        if full not in files:
            if not os.path.isfile(full):
                raise ModelFileInvalid(
                    path,
                    f"its external data file '{loc}' is not beside it",
                    expected,
                    fix=f"copy '{loc}' (it comes with the model) into the model's folder",
                )
            files.append(full)
    return files


def load_external_data(model, path: str) -> bool:
    """Read the (checked) external data of ``model`` into it, from the model's folder. True if it had any."""
    if not external_data_files(model, path):
        return False
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except Exception as e:
        raise ModelFileInvalid(
            path,
            f"its external data cannot be read ({type(e).__name__})",
            "an ONNX model with intact external data files beside it",
            fix="re-copy the model together with its data file(s)",
        ) from None
    return True


def load_proto(path: str, with_data: bool = True):
    """The ONNX ModelProto of ``path``; truncated / non-ONNX / empty files raise ModelFileInvalid.

    External data is checked (beside the model, inside its folder) and, with ``with_data``, read into
    the proto from the model's folder (never from the working directory)."""
    import onnx
    from google.protobuf.message import DecodeError

    if not os.path.isfile(path):
        raise ModelFileInvalid(path, "not a file", "an .onnx model file")
    if os.path.getsize(path) < 16:
        raise ModelFileInvalid(
            path, f"only {os.path.getsize(path)} bytes (empty or truncated)", "an intact .onnx model file"
        )
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ModelFileInvalid(
            path,
            f"not a readable ONNX file ({type(e).__name__}: {str(e)[:120]})",
            "an intact .onnx model file (re-copy it; a partial download looks like this)",
        )
    if len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise ModelFileInvalid(path, "an ONNX file with an empty graph (truncated?)", "an intact .onnx model file")
    if with_data:
        load_external_data(model, path)
    else:
        external_data_files(model, path)
    return model


def onnx2torch_convert():
    """onnx2torch's ``convert``, or a VisageError that says how to get it (or to use onnxruntime)."""
    try:
        from onnx2torch import convert
    except ImportError as e:
        raise VisageError(
            "engine 'torch' needs the Python package onnx2torch, which is not installed",
            expected="onnx2torch importable in ComfyUI's Python (it is in Visage's requirements.txt)",
            got=f"{type(e).__name__}: {str(e)[:120]}",
            fix="install it into ComfyUI's Python (python -m pip install onnx2torch, or reinstall Visage's "
            "requirements with ComfyUI-Manager), or set engine to 'onnxruntime' (CPU)",
        ) from None
    return convert


def onnx_signature(path: str) -> OnnxSignature:
    """Inputs/outputs (name, shape) of an ONNX file, without building anything (external data is
    checked, not read)."""
    model = load_proto(path, with_data=False)
    inits = [i.name for i in model.graph.initializer]
    init_set = set(inits)
    inputs = tuple((i.name, value_dims(i)) for i in model.graph.input if i.name not in init_set)
    outputs = tuple((o.name, value_dims(o)) for o in model.graph.output)
    nodes = model.graph.node[:8]
    return OnnxSignature(
        path=path,
        inputs=inputs,
        outputs=outputs,
        initializer_names=tuple(inits),
        first_node_names=tuple(n.name for n in nodes),
        first_node_ops=tuple(n.op_type for n in nodes),
    )


def load_onnx_module(path: str, device="cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Convert an ONNX file to a torch module (weights from the file) on ``device`` / ``dtype``."""
    convert = onnx2torch_convert()
    model = load_proto(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = convert(model)
    except Exception as e:
        raise ModelFileInvalid(
            path,
            f"its graph cannot be converted to torch ({type(e).__name__}: {str(e)[:160]})",
            "an ONNX model of a supported architecture",
        )
    module.eval().requires_grad_(False)
    return module.to(device=torch.device(device), dtype=dtype)


def as_list(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out)


def fixed_batch(signature: "OnnxSignature") -> Optional[int]:
    """The batch size an ONNX file's first input is exported with (an int > 0), or None when dynamic.

    Read once from the signature (the file's declared shape), so a model exported with batch 1 runs
    face by face from the start instead of running the whole batch, failing and looping on every call."""
    s = signature.input_shape
    d = s[0] if s else None
    return d if isinstance(d, int) and d > 0 else None


def batch_probe(module, item_shape: Tuple[int, ...]) -> bool:
    """True when ``module`` (a converted torch graph) gives for a batch of 2 what it gives for each item
    alone: a file exported with batch 1 in its signature whose graph has no batch-1 constant then runs
    batches. Checked ONCE per loaded module and item shape (three small forwards, seeded input, the result
    kept on the module), so no call runs a batch it throws away. Any error or difference -> False."""
    key = tuple(int(v) for v in item_shape)
    cache = getattr(module, "_visage_batch_probe", None)
    if cache is None:
        cache = {}
        try:
            module._visage_batch_probe = cache
        except Exception:  # pragma: no cover - a module that refuses attributes: probe every time
            pass
    if key in cache:
        return cache[key]
    p = next(iter(module.parameters()), None)
    dev, dt = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2,) + key, generator=g).to(dev, dt)
    ok = False
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            both = [_unfold(o, 2) for o in as_list(module(x))]
            singles = [[_unfold(o, 1) for o in as_list(module(x[i : i + 1]))] for i in range(2)]
        tol = 1e-3 if dt == torch.float32 else 2e-2
        ok = len(both) == len(singles[0]) and all(
            torch.allclose(b.float(), torch.cat([s[j] for s in singles], 0).float(), rtol=tol, atol=tol)
            for j, b in enumerate(both)
        )
    except Exception:
        ok = False
    cache[key] = ok
    return ok


def effective_fixed_batch(module, signature: "OnnxSignature", item_shape: Tuple[int, ...]) -> Optional[int]:
    """The batch ``module`` must run with: :func:`fixed_batch` of the file, except that a torch graph whose
    file says batch 1 but which passes :func:`batch_probe` runs batches (None). Host sessions
    (``runs_any_batch``) split and parallelise their batches themselves."""
    fixed = fixed_batch(signature)
    if fixed != 1 or getattr(module, "runs_any_batch", False):
        return fixed
    if batch_probe(module, item_shape):
        log.info(
            "Visage: %s declares batch 1 but its graph runs batches (checked once)", os.path.basename(signature.path)
        )
        return None
    return fixed


# Torch forwards on a CPU: items per forward. A 640x640 detector canvas per forward (8 canvases at once
# took 66 ms per frame on 2 cores against 39 ms one by one: the activations leave the caches), 8 faces
# for the 112 px per-face models (24 at once: 10 ms per face, 8 at a time: 7.5 ms).
CPU_CHUNK_DETECTOR = 1
CPU_CHUNK_FACES = 8


def torch_chunk(device, gpu_chunk: int, cpu_chunk: int) -> int:
    """Items per torch forward: ``cpu_chunk`` on a CPU device, ``gpu_chunk`` elsewhere."""
    return cpu_chunk if torch.device(device).type == "cpu" else gpu_chunk


def run_batched(
    module: torch.nn.Module, x: torch.Tensor, chunk: int = 64, fixed: Optional[int] = None
) -> List[torch.Tensor]:
    """Run ``module`` on ``x`` [N,...] in chunks; verify each output really has the batch axis.

    Outputs are returned as ``[N, ...]``. A graph that folds the batch into its first axis
    (``[N*K, C]``) is unfolded to ``[N, K, C]``. ``fixed`` = the batch the file declares
    (:func:`fixed_batch`): with 1 the items run one at a time straight away. A graph that cannot batch
    although its signature says it can (a hard-coded reshape) still falls back to one item at a time.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("run_batched: empty batch")
    if getattr(module, "runs_any_batch", False):  # a host session splits, batches and parallelises itself
        outs = as_list(module(x))
        try:
            return [_unfold(o, n) for o in outs]
        except _NotBatched:  # an export that drops the batch axis: one item at a time, as below
            fixed = 1
    if fixed == 1 and n > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per = [[_unfold(o, 1) for o in as_list(module(x[i : i + 1]))] for i in range(n)]
        return [torch.cat([p[j] for p in per], 0) for j in range(len(per[0]))]
    results: List[List[torch.Tensor]] = []
    for s in range(0, n, chunk):
        xb = x[s : s + chunk]
        b = xb.shape[0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs = as_list(module(xb))
            outs = [_unfold(o, b) for o in outs]
        except _NotBatched:
            outs = None
        except RuntimeError:
            if b == 1:
                raise
            outs = None
        if outs is None:
            per = [[_unfold(o, 1) for o in as_list(module(xb[i : i + 1]))] for i in range(b)]
            outs = [torch.cat([p[j] for p in per], 0) for j in range(len(per[0]))]
        results.append(outs)
    return [torch.cat([r[j] for r in results], 0) for j in range(len(results[0]))]


class _NotBatched(Exception):
    pass


def _unfold(o: torch.Tensor, b: int) -> torch.Tensor:
    if o.ndim >= 1 and o.shape[0] == b:
        return o
    if o.ndim >= 1 and o.shape[0] % b == 0:
        return o.reshape(b, o.shape[0] // b, *o.shape[1:])
    raise _NotBatched()


MAX_CPU_THREADS = 8


def cpu_threads() -> int:
    """The CPU threads one onnxruntime session uses, chosen here rather than inherited.

    ``VISAGE_CPU_THREADS`` (an integer >= 1) when set; else the CPUs this process may run on
    (``os.sched_getaffinity``, so a container's or taskset's limit counts), at most
    :data:`MAX_CPU_THREADS` (these small convnets gain nothing past that). Pre- and post-processing
    around the sessions (crops, resizes, decoding) is cv2/numpy, one call per face or frame, so it does
    not compete with the session's threads."""
    env = os.environ.get("VISAGE_CPU_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("Visage: VISAGE_CPU_THREADS=%r is not an integer; ignored", env)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_CPU_THREADS))


_TORCH_THREADS_LOCK = threading.RLock()
_CALLER_THREADS: List[int] = []  # torch's thread counts outside the open host_torch_threads blocks

# torch's operator threads for the host pipelines around the models (pastes, warps, masks on frames in
# host memory): their ops are small, and torch's OpenMP workers wait for each other at every op, which
# stalls whenever another process holds a core. One thread: a 4-face 720p swap took 392-418 ms per frame
# against 665-753 ms with 2 threads next to a busy process, and 271-283 against 306-311 ms on a quiet
# machine (2 cores, bench_swap pipelines).
HOST_TORCH_THREADS = 1


@contextmanager
def host_torch_threads(n: int = HOST_TORCH_THREADS):
    """torch's intra-op threads set to ``n`` for the block and restored after it: the host pipeline's
    thread use is chosen, not inherited from whatever the process last set. Re-entrant (a lock held for
    the block), so nested pipelines keep one setting; ComfyUI runs one node at a time."""
    with _TORCH_THREADS_LOCK:
        prev = torch.get_num_threads()
        _CALLER_THREADS.append(prev)
        try:
            if prev == n:
                yield
                return
            torch.set_num_threads(n)
            try:
                yield
            finally:
                torch.set_num_threads(prev)
        finally:
            _CALLER_THREADS.pop()


@contextmanager
def caller_torch_threads():
    """Inside :func:`host_torch_threads`: torch's threads as the caller had them, for a network's forward
    (a face restorer needs every core; only the small ops around it run on one thread). Outside: no-op."""
    with _TORCH_THREADS_LOCK:
        if not _CALLER_THREADS or _CALLER_THREADS[0] == torch.get_num_threads():
            yield
            return
        inner = torch.get_num_threads()
        torch.set_num_threads(_CALLER_THREADS[0])
        try:
            yield
        finally:
            torch.set_num_threads(inner)


def ort_cpu_session(source, path: str, expected: str, threads: int = 0):
    """An onnxruntime CPU session for ``source`` (a file path or serialized model bytes).

    Threads: ``threads`` or :func:`cpu_threads` for the operators, one for the graph (sequential
    execution). No spin-waiting between runs: our pre/post-processing shares these cores (spinning made a
    whole analysis ~5x slower on 2 cores). Load failures raise ModelFileInvalid naming ``path``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else cpu_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelFileInvalid(path, f"onnxruntime cannot load it ({type(e).__name__}: {str(e)[:160]})", expected)


class HostModule:
    """What a host-only model (e.g. an onnxruntime CPU session) shows the code that handles torch
    modules: no parameters, not training, and ``to`` / ``eval`` / ``requires_grad_`` that keep it as
    it is. Subclasses set ``nbytes`` (the model manager's size for non-torch models)."""

    training = False
    nbytes = 0

    def parameters(self):
        return iter(())

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self

    def requires_grad_(self, *_):
        return self


class OrtCpuModule(HostModule):
    """An onnxruntime CPU session behind the same call as a converted torch module.

    Used only when the analysis runs on the CPU (engine 'auto' on a CPU device, or 'onnxruntime'):
    there onnxruntime's kernels are several times faster than torch's for these small convnets,
    and a CPU session holds no GPU memory ComfyUI cannot see.

    Threads (:func:`cpu_threads` = W, chosen, not inherited): one item (one frame, one face) runs on the
    "wide" session, W operator threads. Several items run data-parallel: W worker threads take chunks of
    items from a queue and run them on a second, "narrow" session with ONE operator thread (created on
    first use; onnxruntime sessions are safe to run from several threads at once). On 2 cores that is
    1.5-1.6x faster than the wide session for 24 MobileFaceNet faces and 1.25x for SCRFD frames (small
    convnets scale badly over operator threads; items scale over cores), and a fixed-batch model (batch
    1 in its signature) runs its items in parallel the same way. ``parallel=True`` turns this on (the face
    analysis' small per-face models and detectors); the default keeps one session (large restorers and
    parsers: a second copy would cost hundreds of MB for a gain they were not measured to have).
    """

    runs_any_batch = True  # :func:`run_batched` hands it every item at once

    def __init__(self, path: str, threads: int = 0, parallel: bool = False):
        model = load_proto(path, with_data=False)  # same clear errors for truncated / non-ONNX files
        # external data: read (checked) from the model's folder and handed over inside the proto
        external = load_external_data(model, path)
        source = model.SerializeToString() if external else path
        del model
        self.path = path
        self.threads = int(threads) if threads else cpu_threads()
        self.session = ort_cpu_session(source, path, "an ONNX model onnxruntime can run", self.threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        size = os.path.getsize(path)
        # the narrow session needs the model again: from its file (a model with external data keeps one
        # session: holding its bytes for a second one would cost more than the parallel runs save)
        self.parallel = bool(parallel) and self.threads > 1 and not external
        self._narrow = None
        self._lock = threading.Lock()
        self.nbytes = size * (2 if self.parallel else 1)

    # ------------------------------------------------------------------ sessions
    def narrow_session(self):
        """The one-operator-thread session the data-parallel runs share (created once, on first use)."""
        with self._lock:
            if self._narrow is None:
                self._narrow = ort_cpu_session(self.path, self.path, "an ONNX model onnxruntime can run", 1)
            return self._narrow

    def _chunk(self, n: int) -> int:
        """Items per queued task: 1 for a fixed-batch model; else a few, so every worker gets several
        tasks (balance on a busy machine) while small batches keep their per-run overhead low."""
        if self.fixed_batch == 1:
            return 1
        return max(1, min(4, -(-n // (2 * self.threads))))

    def run_parallel(self, arr) -> List:
        """``arr`` [N,...] (N >= 2) -> the session's outputs for all N items (numpy), computed by
        :func:`worker_pool` threads on the narrow session, in item order."""
        sess = self.narrow_session()
        step = self._chunk(arr.shape[0])
        parts = [arr[s : s + step] for s in range(0, arr.shape[0], step)]
        name = self.input_name
        per = list(worker_pool(self.threads).map(lambda a: sess.run(None, {name: a}), parts))
        # folded-batch exports ([K, C] per item) concatenate along their first axis as well
        return [np.concatenate([p[j] for p in per], 0) for j in range(len(per[0]))]

    def __call__(self, x: torch.Tensor):
        arr = x.detach().float().cpu().numpy()
        n = arr.shape[0]
        if n > 1 and self.parallel:
            return [torch.from_numpy(o) for o in self.run_parallel(arr)]
        if self.fixed_batch == 1 and n > 1:
            per = [self.session.run(None, {self.input_name: arr[i : i + 1]}) for i in range(n)]
            return [torch.cat([torch.from_numpy(p[j]) for p in per], 0) for j in range(len(per[0]))]
        return [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: arr})]


_POOL = None
_POOL_LOCK = threading.Lock()


def worker_pool(threads: int):
    """The process's worker threads for data-parallel onnxruntime runs (``threads`` of them, rebuilt only
    when that number changes). Idle workers sleep; they hold no model."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers != threads:
            old, _POOL = _POOL, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="visage-ort")
            if old is not None:
                old.shutdown(wait=False)
        return _POOL
