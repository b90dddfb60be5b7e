"""The checks of the node pre-flight (`preflight`), one function each, and what they need: the trainers'
imports in a subprocess of their interpreter (`start_imports` / `finish_imports`), the GPUs through
`nvidia-smi` (`check_gpus`), a probe file in the run directory (`check_writable`), free space for two
checkpoints (`check_disk`, with `estimate_checkpoint_bytes`). Each returns a `Check`.

Standard library only; `ernie_num_params` and `spec_checkpoint_bytes` import ernie_cluster's paddle-free shape
tables when called.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

IMPORTS = ("paddle", "paddlenlp", "ernie_cluster", "data_tools._helpers")  # what every trainer imports
# A healthy node imports paddle + paddlenlp in ~5-8 s from a warm cache; a cold network filesystem can take a
# minute. Longer than this is a hung mount: better reported now than as a rendezvous that never completes.
DEFAULT_TIMEOUT_S = 180.0
NVIDIA_SMI_TIMEOUT_S = 30.0  # seconds without persistence mode on 8 GPUs; a GPU off the bus never answers
GIB = 1 << 30
DISK_MARGIN_BYTES = 1 * GIB  # logs, the data cache's index maps, a snapshot's model_state (0.4 GB for base)
CHECKPOINT_COPIES = 2  # the newest complete checkpoint is kept while the next one is written beside it
# model_state.pdparams holds fp32 weights (4 B/param), optimizer.pdopt Adam's two fp32 moments (8 B/param);
# measured on a saved checkpoint: 12.16 B/param, the rest being pickled names and beta-power scalars.
BYTES_PER_PARAM = 12
CHECKPOINT_FIXED_BYTES = 1 << 20  # rng_rank*.pkl, trainer_state.json, MANIFEST.json, pickled tensor names
# AMP is O1 in both engines (static strategy.amp, dynamic auto_cast level O1): the weights stay fp32 and there
# is no fp16 master copy, so AMP adds only the loss-scaling state. (O2 would add 2 B/param of fp16 weights.)
AMP_STATE_BYTES = 64 << 10
_MARK = "__ernie_preflight__"
# Run in the trainers' interpreter: it reports each module before importing it, so a crash (a segfault in a
# CUDA library) still names the module, and prints one result line at the end.
# Python's zlib first, as the trainers and the conversion load it (data_tools, engine_common) before paddle:
# paddle 2.6 exports zlib symbols that break a later zlib (scripts/zlib-first); the probe must not fail
# where the trainers would not.
_IMPORT_SCRIPT = r"""
import zlib
import importlib, json, sys, time, traceback
def say(kind, data):
    print("__ernie_preflight__", kind, json.dumps(data), flush=True)
mods, gpus = [m for m in sys.argv[1].split(",") if m], int(sys.argv[2])
out = {"python": sys.executable, "version": sys.version.split()[0], "modules": {}}
for name in mods:
    say("importing", name)
    t = time.perf_counter()
    try:
        m = importlib.import_module(name)
        out["modules"][name] = {"ok": True, "s": round(time.perf_counter() - t, 3),
                                "file": getattr(m, "__file__", None)}
    except BaseException as e:
        out["modules"][name] = {"ok": False, "type": type(e).__name__,
                                "error": traceback.format_exception_only(type(e), e)[-1].strip()}
p = sys.modules.get("paddle")
if p is not None and out["modules"].get("paddle", {}).get("ok"):
    info = out["paddle"] = {"version": p.__version__, "cuda": bool(p.is_compiled_with_cuda())}
    if gpus > 0 and info["cuda"]:
        try:
            info["devices"] = int(p.device.cuda.device_count())
        except BaseException as e:
            info["devices_error"] = traceback.format_exception_only(type(e), e)[-1].strip()
say("result", out)
import os; os._exit(0)  # skip paddle's atexit teardown: nothing to clean up, and it costs a second
"""
_IMPORT_FIXES = {
    "paddle": "install paddlepaddle-gpu==2.6.2 (GPU runs) or paddlepaddle==2.6.2 (CPU runs) into {python}, or set "
              "environment.python to an interpreter that has it",
    "paddlenlp": "`{python} -m pip install paddlenlp==2.8.1 -c constraints.txt` (the checkout's pins)",
    "ernie_cluster": "install ernie_cluster into {python}, or make the checkout reachable on this node (PYTHONPATH)",
    "data_tools._helpers": "build the compiled helper for this interpreter: `{python} -m pip install <checkout>` "
                           "(setup.py compiles data_tools/_helpers.cpp); an undefined symbol means it was built "
                           "for another Python or compiler",
}
# A probe that fails with these is this node's mount, not the run directory everyone shares.
_NODE_ERRNOS = {errno.EROFS, errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ENOTCONN}


@dataclass(frozen=True)
class Check:
    name: str  # python | gpus | rundir | disk
    ok: bool  # a skipped check is ok (it cannot fail the node) and says so in `skipped`
    detail: str
    fix: str = ""
    skipped: bool = False
    scope: str = "node"  # of a failure: "node" (this machine) or "run" (the same on every node)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "ok" if self.ok else "FAILED"

    def line(self) -> str:
        fix = f" -- fix: {self.fix}" if self.fix and not self.ok else ""
        return f"{self.name} {self.status} ({self.seconds:.2f}s): {self.detail}{fix}"




# ------------------------------------------------------------------------------------------ python imports


def start_imports(python: str, modules: Sequence[str], gpus_expected: int, env: Mapping[str, str],
                   cwd: Optional[Path] = None) -> Union["subprocess.Popen[str]", Check]:
    """The import subprocess, started; or the failed check when the interpreter cannot even start."""
    argv = [python, "-c", _IMPORT_SCRIPT, ",".join(modules), str(int(gpus_expected))]
    try:
        # its own session: a timeout kills whatever the imports started too
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(env), cwd=cwd, text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        return Check("python", False, f"cannot run the trainers' interpreter {python}: {exc.strerror or exc}",
                     f"set environment.python to an interpreter that exists on this node ({python} does not "
                     f"run here)", scope="node")


def finish_imports(started: Union["subprocess.Popen[str]", Check], python: str, gpus_expected: int, *,
                   deadline: float, timeout_s: float) -> Check:
    """Wait for the import subprocess until `deadline` (time.perf_counter()) and judge what it printed."""
    if isinstance(started, Check):
        return started
    timed_out = False
    try:
        out, err = started.communicate(timeout=max(0.1, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        timed_out = True
        out, err = kill_session(started)
    last, result = _parse_import_output(out)
    if result is None:
        return _no_import_result(python, started.returncode, last, err, timeout_s if timed_out else None)
    return judge_imports(result, python, gpus_expected)


def _parse_import_output(out: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """(the module imported last, the result) from the subprocess's marked lines; other output is ignored."""
    last, result = None, None
    for line in out.splitlines():
        if not line.startswith(_MARK + " "):
            continue  # paddle and friends print warnings of their own
        kind, _, payload = line[len(_MARK) + 1:].partition(" ")
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            continue
        if kind == "importing":
            last = str(data)
        elif kind == "result" and isinstance(data, dict):
            result = data
    return last, result


def _no_import_result(python: str, rc: Optional[int], last: Optional[str], err: str,
                      timed_out: Optional[float]) -> Check:
    """The subprocess ended without a result: it hung, crashed, or the interpreter is not Python."""
    where = f" while importing {last}" if last else ""
    tail = _last_line(err)
    fix = _IMPORT_FIXES.get(last or "", "").format(python=python)
    if timed_out is not None:
        return Check("python", False, f"{python} was still importing{' ' + last if last else ''} after "
                     f"{timed_out:.0f}s (a hung or very slow filesystem?)",
                     "check this node's mounts of the software (df, ls on the environment's directories) or drain "
                     "it", scope="node")
    if rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        return Check("python", False, f"{python} was killed by {name}{where}" + (f": {tail}" if tail else ""),
                     fix or "a crash on import is a broken library on this node (CUDA, the driver): drain it",
                     scope="node")
    return Check("python", False, f"{python} exited {rc}{where} without a result" + (f": {tail}" if tail else ""),
                 fix or f"run `{python} -c 'import paddle'` on this node and read its error", scope="node")


def judge_imports(result: Mapping[str, Any], python: str, gpus_expected: int) -> Check:
    """The python check from the subprocess's result: the first module that failed, else paddle's build."""
    mods: Mapping[str, Mapping[str, Any]] = result.get("modules", {})
    failed = [name for name, r in mods.items() if not r.get("ok")]
    where = f"{result.get('python', python)} (Python {result.get('version', '?')})"
    if failed:
        first = mods[failed[0]]
        also = f" (also failed: {', '.join(failed[1:])})" if failed[1:] else ""
        # a package missing from a shared environment is missing on every node; anything else may be this node's
        scope = "run" if first.get("type") == "ModuleNotFoundError" else "node"
        return Check("python", False, f"{where} cannot import {failed[0]}: {first.get('error')}{also}",
                     _IMPORT_FIXES.get(failed[0], "install it into {python}").format(python=python), scope=scope)
    paddle_info: Mapping[str, Any] = result.get("paddle") or {}
    gpu_problem = _paddle_gpu_problem(paddle_info, gpus_expected) if paddle_info else None
    if gpu_problem is not None:
        return Check("python", False, f"{where}: {gpu_problem[0]}", gpu_problem[1].format(python=python),
                     scope=gpu_problem[2])
    took = ", ".join(f"{name} {float(r.get('s', 0.0)):.1f}s" for name, r in mods.items())
    build = ""
    if paddle_info:
        cuda = "with CUDA" if paddle_info.get("cuda") else "CPU-only"
        seen = f", sees {paddle_info['devices']} GPU(s)" if "devices" in paddle_info else ""
        build = f"; paddle {paddle_info.get('version')} {cuda}{seen}"
    return Check("python", True, f"{where} imports {took}{build}")


def _paddle_gpu_problem(info: Mapping[str, Any], gpus_expected: int) -> Optional[Tuple[str, str, str]]:
    """(what, fix, scope) when paddle cannot run this GPU job; None when it can (or the run is on the CPU)."""
    if gpus_expected <= 0:
        return None
    version = info.get("version")
    if not info.get("cuda"):
        return (f"paddle {version} was built without CUDA (paddle.is_compiled_with_cuda() is False) but the run "
                f"expects {gpus_expected} GPU(s)", "install paddlepaddle-gpu==2.6.2 instead of paddlepaddle into "
                "{python}", "run")
    if "devices_error" in info:
        return (f"paddle {version} cannot count the GPUs: {info['devices_error']}",
                "a CUDA driver/runtime mismatch or a broken driver on this node: drain it", "node")
    devices = info.get("devices")
    if isinstance(devices, int) and devices < gpus_expected:
        return (f"paddle {version} sees {devices} GPU(s), the run expects {gpus_expected}",
                "check the driver (nvidia-smi) and $CUDA_VISIBLE_DEVICES on this node, or drain it", "node")
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


# ------------------------------------------------------------------------------------------------- GPUs


def check_gpus(gpus_expected: int, env: Mapping[str, str], timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> Check:
    """`nvidia-smi` lists at least `gpus_expected` GPUs visible through $CUDA_VISIBLE_DEVICES."""
    if gpus_expected <= 0:
        return Check("gpus", True, "CPU run: no GPU expected, nvidia-smi not run", skipped=True)
    exe = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if exe is None:
        return Check("gpus", False, f"nvidia-smi not found on PATH, but the run expects {gpus_expected} GPU(s) "
                     f"here: no NVIDIA driver on this node, or it is not on PATH",
                     "drain this node (scontrol update NodeName=... State=DRAIN Reason=no-nvidia-smi) or load the "
                     "driver's module in environment.setup")
    argv = [exe, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader"]
    try:
        rc, out, err = _run_bounded(argv, env, timeout_s)
    except subprocess.TimeoutExpired:
        return Check("gpus", False, f"nvidia-smi did not answer within {timeout_s:.0f}s (a hung driver or a GPU "
                     f"fallen off the bus)", "drain this node and have its GPUs checked")
    except OSError as exc:
        return Check("gpus", False, f"cannot run {exe}: {exc.strerror or exc}", "drain this node")
    if rc != 0:
        why = _last_line(out + "\n" + err) or f"exit status {rc}"
        return Check("gpus", False, f"nvidia-smi failed: {why}",
                     "the NVIDIA driver does not work on this node: drain it (or reload the driver)")
    listed = parse_nvidia_smi(out)
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    visible = visible_gpus(listed, cvd)
    names = ", ".join(f"{g[0]}: {g[2]} {g[3]}" for g in listed) or "none"
    through = "" if cvd is None else f", {visible} visible through CUDA_VISIBLE_DEVICES={cvd!r}"
    detail = f"nvidia-smi lists {len(listed)} GPU(s) ({names}){through}; the run expects {gpus_expected}"
    if visible < gpus_expected:
        return Check("gpus", False, detail, "a GPU is missing or hidden on this node: drain it, or request "
                     "--gpus-per-node to match resources.gpus_per_node")
    return Check("gpus", True, detail)


def _run_bounded(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> Tuple[int, str, str]:
    """(exit status, stdout, stderr); on timeout its whole session is killed (a wrapper script's children
    would otherwise hold the pipes open) and TimeoutExpired raised."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(env), text=True, errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        raise
    return proc.returncode, out, err


def kill_session(proc: "subprocess.Popen[str]") -> Tuple[str, str]:
    """SIGKILL the session `proc` leads (started with start_new_session) and reap it: (stdout, stderr)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.communicate()


def parse_nvidia_smi(text: str) -> List[Tuple[str, str, str, str]]:
    """(index, uuid, name, memory) per line of `--query-gpu=index,uuid,name,memory.total --format=csv,noheader`."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4 and parts[0].isdigit():
            gpus.append((parts[0], parts[1], ", ".join(parts[2:-1]), parts[-1]))  # a name might hold a comma
    return gpus


def visible_gpus(listed: Sequence[Tuple[str, str, str, str]], cuda_visible_devices: Optional[str]) -> int:
    """How many of the listed GPUs CUDA will show, reading $CUDA_VISIBLE_DEVICES as CUDA does: its entries in
    order, up to the first one that names no GPU. An index counts when nvidia-smi lists it, or as a position
    (Slurm's cgroups renumber the job's GPUs from 0); a UUID by prefix; MIG instances are trusted."""
    if cuda_visible_devices is None:
        return len(listed)
    indexes = {g[0] for g in listed}
    seen = 0
    for label in (x.strip() for x in cuda_visible_devices.split(",")):
        if label.isdigit():
            found = label in indexes or int(label) < len(listed)
        elif label.startswith("GPU-"):
            found = any(g[1].startswith(label) for g in listed)
        else:
            found = label.startswith("MIG-")
        if not found:
            break
        seen += 1
    return min(seen, len(listed))


# ------------------------------------------------------------------------------------ run directory, disk


def check_writable(run_root: Path, host: str) -> Check:
    """Create, fsync and remove a probe file in the run directory and in checkpoints/ when it exists."""
    checkpoints = Path(run_root) / "checkpoints"
    targets = [Path(run_root)] + ([checkpoints] if os.path.lexists(checkpoints) else [])  # never raises
    for directory in targets:
        error = _probe(directory, host)
        if error is not None:
            node = error.errno in _NODE_ERRNOS
            fix = ("this node's mount of the run directory is read-only or stale: remount it or drain the node"
                   if node else f"make {directory} a writable directory for this user on every node "
                                f"(quota, permissions, output_dir)")
            return Check("rundir", False, f"cannot write in {directory}: {error.strerror or error}"
                         f" ({errno.errorcode.get(error.errno or 0, '?')})", fix, scope="node" if node else "run")
    return Check("rundir", True, f"created, fsynced and removed a probe file in {', '.join(map(str, targets))}")


def _probe(directory: Path, host: str) -> Optional[OSError]:
    """Write a probe file unique to this host and process; None when that worked, else the error."""
    name = f".preflight-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)[:64]}-{os.getpid()}-{time.time_ns()}"
    path = directory / name
    created = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        try:
            os.write(fd, b"\0" * 4096)  # one block: a full disk or an exhausted quota fails here, not at open
            os.fsync(fd)  # the server must take it (NFS reports some errors only on fsync/close)
        finally:
            os.close(fd)
        return None
    except OSError as exc:
        return exc
    finally:
        if created:
            try:
                os.unlink(path)
            except OSError:
                pass


def check_disk(run_root: Path, checkpoint_bytes_estimate: int, *, copies: int = CHECKPOINT_COPIES,
               margin_bytes: int = DISK_MARGIN_BYTES) -> Check:
    """Free space on the checkpoints' filesystem >= `copies` checkpoints + a margin (statvfs: quotas unseen)."""
    checkpoints = Path(run_root) / "checkpoints"
    target = checkpoints if os.path.isdir(checkpoints) else Path(run_root)  # never raises (Path.is_dir may)
    try:
        free = shutil.disk_usage(target).free  # what this (non-root) user may still use
    except OSError as exc:
        return Check("disk", False, f"cannot stat the filesystem of {target}: {exc.strerror or exc}",
                     "the run directory must exist and be reachable on every node", scope="run")
    need = copies * max(0, int(checkpoint_bytes_estimate)) + margin_bytes
    size = (f"{copies} x {_size(checkpoint_bytes_estimate)} checkpoint + {margin_bytes / GIB:.1f} GiB margin"
            if checkpoint_bytes_estimate > 0 else f"checkpoint size unknown: the {margin_bytes / GIB:.1f} GiB margin")
    detail = f"{target}: {free / GIB:.1f} GiB free, {need / GIB:.1f} GiB needed ({size})"
    if free < need:
        return Check("disk", False, detail, f"free {math.ceil((need - free) / GIB)} GiB on that filesystem "
                     f"(older runs, snapshots/) or point output_dir at a larger one", scope="run")
    return Check("disk", True, detail)


def _size(n: int) -> str:
    """A checkpoint's size: GiB, or MiB below 0.1 GiB (a test model's 2.8 MiB is not "0.00 GiB")."""
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / (1 << 20):.1f} MiB"


# ------------------------------------------------------------------------------------- checkpoint estimate


def estimate_checkpoint_bytes(num_params: int, *, amp: bool) -> int:
    """Bytes of one complete checkpoint: fp32 weights + Adam's two fp32 moments (12 B/param) + small files.

    `amp`: O1, as both engines run it, keeps fp32 weights and no fp16 master copy: only the loss-scaling state
    is added. ERNIE 1.0 base (100.5M parameters with its heads, the decoder tied to the embedding): 1.2 GB."""
    extra = AMP_STATE_BYTES if amp else 0
    return int(num_params) * BYTES_PER_PARAM + CHECKPOINT_FIXED_BYTES + extra


def ernie_num_params(config: Mapping[str, Any]) -> int:
    """Parameters of ErnieForPretraining for a config (vocab_size, hidden_size, num_hidden_layers,
    intermediate_size, max_position_embeddings, type_vocab_size), counting tied tensors once; paddle-free."""
    from ..weights.mapping import ernie_pretraining_shapes
    from ..weights.names import ERNIE_TIES

    shapes = ernie_pretraining_shapes(config)
    return sum(math.prod(shape) for name, shape in shapes.items() if name not in ERNIE_TIES)


def spec_checkpoint_bytes(spec: Any) -> int:
    """`estimate_checkpoint_bytes` for a JobSpec, from its effective model config (built-in table or model
    directory, model.* overrides, vocab): no model is built, paddle is not imported."""
    from ..spec import effective_model_shape

    shape, _ = effective_model_shape(spec)
    return estimate_checkpoint_bytes(ernie_num_params(shape.config), amp=bool(spec.train.use_amp))
