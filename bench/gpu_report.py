"""``python bench/gpu_report.py``: what the GPU kernels compile to, read without a GPU.

Compiles every Triton kernel with every config the autotuner may pick, for each architecture
(``triton.compile`` with a ``GPUTarget``: no GPU needed), reads the CUDA kernels from the built
extension's fatbin, and reports per kernel: registers, stack bytes (local memory), local loads and
stores, barriers, and for the hot loops the instructions per (query, component, dimension)
element. A throughput model of one SM turns those counts into a predicted time at M = K = 16384
as a multiple of the MUFU floor (M·K·(D+1) exponentials per sweep).

The model (per SM per clock, NVIDIA H100 SXM, compute capability 9.0; CUDA C++ Programming Guide,
"Arithmetic Instructions", throughput table; each of the 4 schedulers issues one warp instruction
per clock):

====================  ==================================================  ======================
pipe                  instructions                                        warp instructions/clk
====================  ==================================================  ======================
issue                 every instruction                                   4
fma                   FFMA FADD FMUL (32-bit floating add/multiply/fma)   4 (128 lanes)
alu                   FMNMX FSEL FSETP, integer add/logic/shift/compare,   2 (64 lanes)
                      IMAD, LEA, SEL, MOV, P2R/R2P
mufu                  MUFU.* (exp2, log2, rcp, ...)                        0.5 (16 lanes)
conv                  F2I I2F F2F FRND                                     0.5 (16 lanes)
shfl                  SHFL                                                 1 (32 lanes)
lsu                   LDG STG LDS STS LDL STL ATOM RED LD ST               1 (32 lanes)
====================  ==================================================  ======================

A kernel's cost per element (in SM clocks per warp of 32 elements) is the largest of
count_pipe / rate_pipe over the pipes: the time if every pipe ran at its rate with perfect
overlap and no stalls (latency, occupancy, memory) — a lower bound on each kernel's time, so a
kernel that meets its target here can still miss it on hardware; measurements
(``bench/gpu_check.sh``) are the check. Per tile of components a thread executes the cheapest
innermost loop without exponentials (the backward's recomputation of S, if any) and the cheapest
innermost loop with exponentials (both: the tiles without weight corrections) D times, plus the rest of the tile loop once
(both branches of the diagonal test are counted: an upper bound for the tile overhead).
The MUFU floor: (D+1)/D exponentials per element at 16 per SM per clock, i.e. 2·(D+1)/D clocks
per warp-element for one sweep; forward+backward has two sweeps' worth (4·(D+1)/D).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the package from this tree when it is not installed

#: Per-SM rates (warp instructions per clock) of the model, H100 SXM (sm_90).
RATES = {"issue": 4.0, "fma": 4.0, "alu": 2.0, "mufu": 0.5, "conv": 0.5, "shfl": 1.0, "lsu": 1.0}
H100 = {"name": "NVIDIA H100 SXM (model)", "sms": 132, "clock_hz": 1.98e9}

FMA_OPS = {"FFMA", "FADD", "FMUL", "FFMA32I", "FADD32I", "FMUL32I", "HFMA2", "HADD2", "HMUL2", "FSWZADD"}
ALU_OPS = {"FMNMX", "FSEL", "FSETP", "FSET", "ISETP", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR",
           "IMAD", "IMNMX", "LEA", "SEL", "MOV", "P2R", "R2P", "PRMT", "VIADD", "IABS", "FCHK", "PLOP3", "CS2R",
           "VIMNMX", "BMSK", "POPC", "FLO", "BREV", "IMUL"}
CONV_OPS = {"F2I", "I2F", "F2F", "FRND", "I2FP", "F2IP"}
LSU_OPS = {"LDG", "STG", "LDS", "STS", "LDL", "STL", "ATOM", "ATOMG", "ATOMS", "RED", "LD", "ST", "LDSM"}
#: the columns of the per-element table
COLUMNS = ("MUFU.EX2", "FP32", "SHFL", "BAR", "LDS", "LDG", "LDL/STL", "total")

SIZES = (10, 32, 64)  # D of the predictions, at M = K = 16384
TARGETS = {"forward": 1.25, "forward+backward": 1.5}


# ----------------------------------------------------------------------------------- SASS parsing

_INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def parse_sass(text: str) -> dict[str, list[tuple[int, str, str, bool]]]:
    """``cuobjdump -sass`` output -> {function: [(address, opcode, operands, predicated)]}
    (predicated: guarded by a predicate other than the always-true PT)."""
    funcs: dict[str, list] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"\s+Function : (\S+)", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        m = _INS.search(line)
        if m and cur is not None:
            pred = m.group(2) is not None and m.group(2).strip() not in ("@PT", "@UPT")
            funcs[cur].append((int(m.group(1), 16), m.group(3), m.group(4), pred))
    return funcs


def parse_res_usage(text: str) -> dict[str, dict]:
    """``cuobjdump -res-usage`` output -> {function: {"REG": n, "STACK": bytes, "SHARED": bytes, ...}}."""
    out: dict[str, dict] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*Function (\S+):", line)
        if m and i + 1 < len(lines):
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", lines[i + 1])}
    return out


def loops(ins) -> list[tuple[int, int]]:
    """Loops as (first, last) address ranges: a branch to an address at or before itself."""
    out = []
    for addr, op, args, _ in ins:
        if op.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", args)
            if t and int(t.group(1), 16) <= addr:
                out.append((int(t.group(1), 16), addr))
    return sorted(set(out))


def innermost(ranges) -> list[tuple[int, int]]:
    return [r for r in ranges if r[1] > r[0] and not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in ranges)]


def op_class(op: str) -> str:
    base = op.split(".")[0]
    if base == "MUFU":
        return "mufu"
    if base in FMA_OPS:
        return "fma"
    if base in ALU_OPS:
        return "alu"
    if base in CONV_OPS:
        return "conv"
    if base == "SHFL":
        return "shfl"
    if base in LSU_OPS:
        return "lsu"
    return "other"


@dataclasses.dataclass
class Counts:
    """Instruction counts of a stretch of machine code."""

    ops: collections.Counter

    @classmethod
    def of(cls, ins, lo=None, hi=None, exclude=()) -> "Counts":
        c = collections.Counter()
        for addr, op, *_ in ins:
            if (lo is None or lo <= addr <= hi) and not any(a <= addr <= b for a, b in exclude):
                if op in ("NOP",) or op.startswith("EXIT"):
                    continue
                c[op] += 1
        return cls(c)

    def __add__(self, other):
        return Counts(self.ops + other.ops)

    def scaled(self, f: float) -> dict:
        return {k: v * f for k, v in self.ops.items()}

    def total(self) -> int:
        return sum(self.ops.values())

    def has_exp(self) -> bool:
        return self.ops.get("MUFU.EX2", 0) > 0


def columns(per: dict) -> dict:
    """Per-element figures of the report's columns from opcode -> count."""
    def tot(pred):
        return sum(v for k, v in per.items() if pred(k))

    return {
        "MUFU.EX2": per.get("MUFU.EX2", 0.0),
        "FP32": tot(lambda k: k.split(".")[0] in FMA_OPS | {"FMNMX", "FSEL"}),
        "SHFL": tot(lambda k: k.startswith("SHFL")),
        "BAR": tot(lambda k: k.startswith("BAR")),
        "LDS": tot(lambda k: k.startswith("LDS")),
        "LDG": tot(lambda k: k.startswith("LDG")),
        "LDL/STL": tot(lambda k: k.startswith(("LDL", "STL"))),
        "total": sum(per.values()),
    }


def pipes(per: dict) -> dict:
    out = collections.Counter()
    for k, v in per.items():
        out[op_class(k)] += v
        out["issue"] += v
    return out


def clocks_per_warp_element(per: dict) -> tuple[float, str]:
    """The model: max over pipes of count / rate (SM clocks per warp of 32 elements), and the pipe."""
    p = pipes(per)
    best = max(((p.get(k, 0.0) / r, k) for k, r in RATES.items()), default=(0.0, "issue"))
    return best


@dataclasses.dataclass
class KernelReport:
    source: str  # "triton" or "cuda"
    name: str
    arch: int
    config: str
    regs: int
    stack: int
    shared: int
    local_ops: int  # LDL + STL anywhere in the kernel
    barriers_in_inner_loops: int
    barriers: int
    shuffles: int
    elements_per_iteration: int | None = None  # per thread, of one innermost loop iteration
    hot: dict | None = None  # opcode -> count per element (inner loops; outer part kept apart)
    outer: dict | None = None  # opcode -> count per tile iteration (per thread), outside inner loops

    def per_element(self, d: int) -> dict:
        """Opcode -> count per element at latent dimension d."""
        if self.hot is None:
            return {}
        out = collections.Counter(self.hot)
        for k, v in (self.outer or {}).items():
            out[k] += v / (self.elements_per_iteration * d)
        return dict(out)


_TARGET = re.compile(r"0x([0-9a-f]+)")
_D_FOR_PATHS = 32  # D at which the cheapest path through a tile iteration is chosen


def tile_path(ins, body: tuple[int, int], inner: list[tuple[int, int]], d: int = _D_FOR_PATHS):
    """The cheapest way through one iteration of the loop ``body`` (the tile loop) that runs an
    innermost loop with exponentials and, if the body has any, one without (each D times): returns
    (the inner loops taken, opcode counts of the rest of the path). Every tile runs one path; most
    take the one without weight corrections, which is the cheapest, so the code of the diagonal
    tiles' branches is not charged to every tile (charging the whole loop body would count code
    that the compiler duplicates per branch several times over)."""
    import heapq

    lo, hi = body
    sub = [t for t in ins if lo <= t[0] <= hi]
    if not sub:
        return [], {}
    index = {t[0]: n for n, t in enumerate(sub)}
    loops_in = [r for r in inner if lo <= r[0] and r[1] <= hi]
    has_exp = {r: Counts.of(ins, *r).has_exp() for r in loops_in}
    need_noexp = not all(has_exp.values())
    loop_cost = {r: Counts.of(ins, *r).total() * d for r in loops_in}

    def target(args):
        t = _TARGET.search(args)
        return int(t.group(1), 16) if t else None

    def where(addr):  # an address in the body: its index, else the end of the iteration
        return "end" if addr is None or addr == lo or addr not in index else index[addr]

    def succ(n):
        """[(next index or "end", cost, inner loop run or None)] from instruction n."""
        a, op, args, pred = sub[n]
        r = next((r for r in loops_in if r[0] <= a <= r[1]), None)
        if r is not None:  # the whole inner loop (entered at its head), then what follows it
            last = index[max(t[0] for t in sub if t[0] <= r[1])]
            outs = [(last + 1 if last + 1 < len(sub) else "end", loop_cost[r], r)]
            for b, op2, args2, _ in sub:  # branches out of the loop
                if r[0] <= b <= r[1] and op2.startswith("BRA") and not (r[0] <= (target(args2) or -1) <= r[1]):
                    outs.append((where(target(args2)), loop_cost[r], r))
            return outs
        nxt = n + 1 if n + 1 < len(sub) else "end"
        cost = 0 if op == "NOP" else 1
        if op.startswith(("EXIT", "RET")):
            return [(nxt, cost, None)] if pred else []
        if op.startswith("BRA"):
            out = [(where(target(args)), cost, None)]
            return out + [(nxt, cost, None)] if pred else out
        return [(nxt, cost, None)]

    # Dijkstra over (instruction, ran an exp loop, ran a loop without exp)
    start = (0, False, False)
    dist, prev, heap, best = {start: 0}, {}, [(0, start)], None
    while heap:
        c, state = heapq.heappop(heap)
        if dist.get(state) != c:
            continue
        n, e, x = state
        for nxt, cost, r in succ(n):
            e2, x2 = e or (r is not None and has_exp[r]), x or (r is not None and not has_exp[r])
            if nxt == "end":
                if e2 and (x2 or not need_noexp) and (best is None or c + cost < best[0]):
                    best = (c + cost, state, r)
                continue
            key = (nxt, e2, x2)
            if c + cost < dist.get(key, float("inf")):
                dist[key], prev[key] = c + cost, (state, r)
                heapq.heappush(heap, (c + cost, key))
    if best is None:
        return [], {}
    taken, counts = [], collections.Counter()
    _, state, r = best
    while True:  # walk back from the end: loops taken, and the other instructions on the path
        if r is not None:
            taken.append(r)
        elif sub[state[0]][1] != "NOP":
            counts[sub[state[0]][1]] += 1
        if state == start:
            break
        state, r = prev[state]
    return taken[::-1], dict(counts)


def analyze(source, name, arch, config, ins, usage, elements_per_iteration) -> KernelReport:
    rng = loops(ins)
    inner = innermost(rng)
    bars_inner = sum(Counts.of(ins, lo, hi).ops.get(op, 0) for lo, hi in inner for op in list(Counts.of(ins, lo, hi).ops)
                     if op.startswith("BAR"))
    allc = Counts.of(ins)
    rep = KernelReport(
        source=source, name=name, arch=arch, config=config, regs=usage.get("REG", 0), stack=usage.get("STACK", 0),
        shared=usage.get("SHARED", 0),
        local_ops=sum(v for k, v in allc.ops.items() if k.startswith(("LDL", "STL"))),
        barriers_in_inner_loops=bars_inner, barriers=sum(v for k, v in allc.ops.items() if k.startswith("BAR")),
        shuffles=sum(v for k, v in allc.ops.items() if k.startswith("SHFL")),
    )
    if elements_per_iteration is None or not inner:
        return rep
    exp_loops = [r for r in inner if Counts.of(ins, *r).has_exp()]
    if not exp_loops:
        return rep
    hot_exp = min(exp_loops, key=lambda r: Counts.of(ins, *r).total())
    # the tile loop: the smallest loop that holds the cheapest exp loop
    parents = [r for r in rng if r != hot_exp and r[0] <= hot_exp[0] and hot_exp[1] <= r[1]]
    taken, outer = [], {}
    if parents:
        taken, outer = tile_path(ins, min(parents, key=lambda r: r[1] - r[0]), inner)
    if not taken:  # no tile loop (or no path found): the cheapest loops, nothing else
        no_exp = [r for r in inner if not Counts.of(ins, *r).has_exp()]
        taken = [hot_exp] + ([min(no_exp, key=lambda r: Counts.of(ins, *r).total())] if no_exp else [])
    hot = Counts(collections.Counter())
    for r in taken:
        hot = hot + Counts.of(ins, *r)
    rep.elements_per_iteration = elements_per_iteration
    rep.hot = hot.scaled(1.0 / elements_per_iteration)
    rep.outer = outer
    return rep


# ------------------------------------------------------------------------------------- compiling

def tool(name: str) -> str:
    """cuobjdump / nvdisasm / ptxas: the ones Triton ships, else the CUDA toolkit's."""
    try:
        import triton

        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(p):
            return p
    except ImportError:
        pass
    for p in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name),):
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{name} not found (it ships with triton and with the CUDA toolkit)")


def _run(args, data: bytes | None = None, suffix=".cubin") -> str:
    import tempfile

    if data is None:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        return subprocess.run(args + [f.name], capture_output=True, text=True, check=True).stdout


def triton_signature(fn, dtype: str = "fp32", constexprs: dict | None = None):
    """Signature of a Triton kernel as the launcher would specialise it: pointers of ``dtype``,
    other runtime arguments i32, pointers and the padded extents MP, KP divisible by 16."""
    sig, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*" + dtype
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[p.name] = "i32"
            if p.name in ("MP", "KP"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def compile_triton(fn, constexprs: dict, num_warps: int, arch: int, dtype: str = "fp32", maxnreg=None) -> bytes:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = triton_signature(fn, dtype)
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    opts = {"num_warps": num_warps} if maxnreg is None else {"num_warps": num_warps, "maxnreg": maxnreg}
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    return k.asm["cubin"]


def cubin_report(source, name, arch, config, cubin: bytes, elements_per_iteration) -> KernelReport:
    usage = parse_res_usage(_run([tool("cuobjdump"), "-res-usage"], cubin))
    sass = parse_sass(_run([tool("cuobjdump"), "-sass"], cubin))
    fname = next(iter(sass))
    return analyze(source, name, arch, config, sass[fname], usage.get(fname, {}), elements_per_iteration)


def _in_subprocess(archs, planted: bool, jobs: int | None = None) -> list[KernelReport]:
    """Under TRITON_INTERPRET=1 (the CPU test session) kernels are interpreted functions that cannot
    be compiled: compile in a fresh process without it and read its JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, os.path.join(HERE, "gpu_report.py"), "--json", "--no-cuda", "--arch", *map(str, archs)]
    cmd += ["--jobs", str(jobs)] if jobs else []
    out = subprocess.run(cmd + (["--planted"] if planted else []), capture_output=True, text=True, env=env,
                         check=True).stdout
    return [KernelReport(**r) for r in json.loads(out)["kernels"]]


def planted_reports(arch: int = 90) -> list[KernelReport]:
    """The deliberately bad kernels of ``bench/planted.py`` (a spilling one, one with a barrier in its loop)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return [r for r in _in_subprocess((arch,), True) if r.name.startswith("_planted")]
    from planted import PLANTED  # bench/, beside this file

    return [cubin_report("triton", name, arch, "planted", compile_triton(fn, cx, nw, arch), None)
            for name, (fn, cx, nw) in PLANTED.items()]


def _triton_report(name: str, c: dict, arch: int, dtype: str) -> KernelReport:
    """Compile kernel ``name`` of ``triton_kernels.KERNELS`` with tile config ``c`` for ``arch``; its report."""
    from tcvae_kernels.backends import triton_kernels as tkn

    fn, _, fixed = tkn.KERNELS[name]
    cub = compile_triton(fn, {"BLOCK_M": c["BLOCK_M"], "BLOCK_K": c["BLOCK_K"], **fixed}, c["num_warps"], arch, dtype,
                         c.get("maxnreg"))
    epi = None if name.startswith("_marginal_exact_kernel") else c["BLOCK_M"] * c["BLOCK_K"] // (32 * c["num_warps"])
    return cubin_report("triton", name, arch, triton_config_label(c), cub, epi)


def triton_reports(archs=(80, 90), dtype: str = "fp32", kernels=None, jobs: int | None = None) -> list[KernelReport]:
    """Every Triton kernel (and variant) of ``triton_kernels.KERNELS`` × every CONFIGS entry × arch,
    compiled by ``jobs`` processes (default: one per core; 1: in this process), in that order."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return [r for r in _in_subprocess(archs, False, jobs) if not kernels or r.name in kernels]
    from tcvae_kernels.backends import triton_kernels as tkn

    work = []
    for name, (_, kind, _) in tkn.KERNELS.items():
        if kernels and name not in kernels:
            continue
        seen = set()
        for cfg in tkn.CONFIGS:
            c = cfg[kind]
            key = (c["BLOCK_M"], c["BLOCK_K"], c["num_warps"])
            if key not in seen:
                seen.add(key)
                work += [(name, c, arch, dtype) for arch in archs]
    jobs = min(len(work), jobs or os.cpu_count() or 1)
    if jobs <= 1:
        return [_triton_report(*w) for w in work]
    import concurrent.futures
    import multiprocessing

    # fresh interpreters (spawn): a fork of a process that holds torch's and triton's threads is unsafe
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_triton_report, *zip(*work)))


def triton_config_label(c: dict) -> str:
    return f"{c['BLOCK_M']}x{c['BLOCK_K']}x{c['num_warps']}w"


#: CUDA kernels: per thread, elements of one iteration of the innermost d loop in float
#: (csrc/tcvae_fused.h: kRows · kTile = 2 · 32); "+grad": the forward instantiated with GRAD = true
#: (autograd's forward, which also sums the grad_z terms); "+laplace": the Laplace family's instantiation
CUDA_KERNELS = {f"{k}{f}": v for f in ("", "+laplace") for k, v in
                {"forward_kernel": 64, "forward_kernel+grad": 64, "backward_cols_kernel": 64, "exact_kernel": None}.items()}


def extension_path() -> str | None:
    import tcvae_kernels

    here = os.path.dirname(os.path.abspath(tcvae_kernels.__file__))  # the package: tcvae_kernels/_C*.so
    found = sorted(glob.glob(os.path.join(here, "_C*.so")))
    return found[0] if found else None


def _cuda_name(pretty: str) -> tuple[str, str] | None:
    """('forward_kernel+grad', 'float') from 'tcvae::fused::(anonymous)::forward_kernel<float, true,
    (tcvae::Family)0>(...)'; the Laplace family ((tcvae::Family)1) adds '+laplace'."""
    m = re.search(r"(\w+_kernel)<(\w+)(?:, (true|false))?(?:, \(tcvae::Family\)(\d))?>", pretty)
    if not m:
        return None
    name = m.group(1) + ("+grad" if m.group(3) == "true" and m.group(1) == "forward_kernel" else "")
    return name + ("+laplace" if m.group(4) == "1" else ""), m.group(2)


def cuda_reports(archs=(80, 90), so: str | None = None) -> list[KernelReport]:
    """The CUDA kernels in the extension's fatbin (empty if it was built without CUDA)."""
    so = so or extension_path()
    if so is None:
        return []
    out = []
    for arch in archs:
        try:
            sass_text = _run([tool("cuobjdump"), "-sass", "-arch", f"sm_{arch}", so])
            usage = parse_res_usage(_run([tool("cuobjdump"), "-res-usage", "-arch", f"sm_{arch}", so]))
        except subprocess.CalledProcessError:
            continue
        names = {}
        if usage or sass_text.strip():
            mangled = sorted(set(usage) | set(parse_sass(sass_text)))
            demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True).stdout.split("\n")
            names = dict(zip(mangled, demangled))
        sass = parse_sass(sass_text)
        for mangled, pretty in names.items():
            got = _cuda_name(pretty)
            if not got or got[0] not in CUDA_KERNELS:
                continue
            name, dtype = got
            if name.startswith("exact_kernel") and "true" not in pretty:  # the GRAD instantiation is the one used in training
                continue
            out.append(analyze("cuda", name, arch, dtype, sass.get(mangled, []), usage.get(mangled, {}),
                               CUDA_KERNELS[name]))
    return out


# ------------------------------------------------------------------------------------ predictions

#: what one call costs: "forward" (no gradients: evaluation) and "train", the forward that also
#: sums the grad_z terms followed by the one backward pass (grad_mu, grad_logvar)
#: (a row label "<source>" or "<source> laplace": the posterior family)
SWEEPS = {
    f"{src}{label}": {"forward": [fwd + sfx], "train": [fwd + "+grad" + sfx, bwd + sfx]}
    for label, sfx in (("", ""), (" laplace", "+laplace"))
    for src, fwd, bwd in (("triton", "_fwd_kernel", "_bwd_cols_kernel"), ("cuda", "forward_kernel", "backward_cols_kernel"))
}


#: (M, K, dims) of a batch of 256 against a bank of 16,128 (docs/estimators.md, "A component bank")
BANK_SHAPE = (256, 16384, (10, 32))


def floor_clocks(d: int) -> float:
    """MUFU floor of one sweep, SM clocks per warp-element: (D+1)/D exps per element at 0.5/clk."""
    return (d + 1) / d / RATES["mufu"]


def programs(source: str, name: str, config: str, m: int, k: int, sms: int) -> int:
    """Programs (thread blocks) one launch of kernel ``name`` runs at M queries × K components, with
    the launchers' split-K rule (triton_kernels._num_splits, csrc/tcvae_cuda.cu ``splits``): a row
    axis of M (forward: programs of BLOCK_M queries) or K (column backward: BLOCK_K components),
    times splits = min(⌈2·SMs / row blocks⌉, cap), the row blocks of the split rule counted with
    the largest block of any config (Triton; cap ⌈other axis / 512⌉) or 2·128 rows (CUDA float;
    cap ⌊other axis / 128⌋)."""
    cols_kernel = "cols" in name
    rows, other = (k, m) if cols_kernel else (m, k)
    def cdiv(a, b):
        return -(-a // b)

    if source == "triton":
        from tcvae_kernels.backends.triton_kernels import CONFIGS

        bm, bk, _ = (int(x) for x in config.rstrip("w").split("x"))
        block = bk if cols_kernel else bm
        kind, axis = ("cols", "BLOCK_K") if cols_kernel else ("rows", "BLOCK_M")
        split_block = max(c[kind][axis] for c in CONFIGS)
        splits = max(1, min(cdiv(2 * sms, cdiv(rows, split_block)), cdiv(other, 512)))
    else:  # kRows<float> · Threads<float> = 256 rows a block; M, K padded to 256; cap: 4 tiles of 32
        block = split_block = 256
        rows, other = cdiv(rows, 256) * 256, cdiv(other, 256) * 256
        splits = max(1, min(cdiv(2 * sms, cdiv(rows, split_block)), other // 128, 65535))
    return cdiv(rows, block) * splits


def predict(reports: list[KernelReport], arch: int = 90, m: int = 16384, k: int = 16384, dims=SIZES,
            machine=H100, pick=min, grad_components: int | None = None) -> list[dict]:
    """For each source (triton: the best config per kernel, or the worst with ``pick=max``, which
    bounds whatever the autotuner keeps; cuda: float) and D: predicted forward and forward+backward
    times and their ratios to the MUFU floor. A launch of fewer programs than SMs (a small batch
    against a bank: M = 256, K = 16384) runs at that fraction of the machine: its clocks per
    warp-element are divided by min(1, programs / SMs) (``sm_fill``). ``grad_components``: the
    leading components that get d/dmu, d/dlogvar (a bank's batch; None: all K): the column backward
    sweeps M × grad_components elements, its clocks (per warp-element of the M × K sweep) scaled by
    grad_components / K."""
    kc = k if grad_components is None else grad_components
    rows = []
    for label, sweeps in SWEEPS.items():
        source = label.split()[0]
        cand = [r for r in reports if r.source == source and r.arch == arch and r.hot is not None
                and (source == "triton" or r.config == "float")]
        if not cand:
            continue
        for d in dims:
            best = {}
            for name in sweeps["forward"] + sweeps["train"]:
                opts = []
                for r in cand:
                    if r.name == name:
                        clk, pipe = clocks_per_warp_element(r.per_element(d))
                        cols = "cols" in name
                        fill = min(1.0, programs(source, name, r.config, m, kc if cols else k, machine["sms"])
                                   / machine["sms"])
                        opts.append((clk / fill * (kc / k if cols else 1.0), pipe, r.config, fill))
                if opts:
                    best[name] = pick(opts, key=lambda t: t[0])
            if len(best) < 3:
                continue
            fwd = sum(best[n][0] for n in sweeps["forward"])
            total = sum(best[n][0] for n in sweeps["train"])
            fl = floor_clocks(d)
            sec = m * k * d / 32 / machine["sms"] / machine["clock_hz"]
            rows.append({
                "source": label, "D": d, "M": m, "K": k,
                "forward_ratio": fwd / fl, "fwd_bwd_ratio": total / (2 * fl),
                "forward_ms": fwd * sec * 1e3, "fwd_bwd_ms": total * sec * 1e3,
                "floor_forward_ms": fl * sec * 1e3,
                "kernels": {n: {"clk_per_warp_element": c, "bound_by": p, "config": cfg, "sm_fill": f}
                            for n, (c, p, cfg, f) in best.items()},
            })
    return rows


# ----------------------------------------------------------------------------------------- output

def kernel_table(reports: list[KernelReport], d: int = 32) -> str:
    head = ("| source | kernel | arch | config | regs | stack B | LDL+STL | BAR (in inner loops) | "
            + " | ".join(f"{c}/el" for c in COLUMNS) + " | model clk/warp-el (bound) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        per = r.per_element(d)
        cols = columns(per)
        model = ""
        if per:
            clk, pipe = clocks_per_warp_element(per)
            model = f"{clk:.2f} ({pipe})"
        vals = " | ".join(f"{cols[c]:.2f}" if per else "" for c in COLUMNS)
        lines.append(f"| {r.source} | {r.name} | sm_{r.arch} | {r.config} | {r.regs} | {r.stack} | {r.local_ops} | "
                     f"{r.barriers} ({r.barriers_in_inner_loops}) | {vals} | {model} |")
    return "\n".join(lines)


def prediction_table(rows: list[dict]) -> str:
    lines = ["| source | D | forward ms | × MUFU floor | fwd+bwd ms | × floor (2 sweeps) | kernels (clk/warp-el, bound) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ks = "; ".join(f"{n} {v['clk_per_warp_element']:.2f} {v['bound_by']} [{v['config']}]"
                       + (f" fill {v['sm_fill']:.2f}" if v.get("sm_fill", 1.0) < 1 else "") for n, v in r["kernels"].items())
        lines.append(f"| {r['source']} | {r['D']} | {r['forward_ms']:.3g} | {r['forward_ratio']:.2f} | "
                     f"{r['fwd_bwd_ms']:.3g} | {r['fwd_bwd_ratio']:.2f} | {ks} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/gpu_report.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (80 90)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown tables")
    ap.add_argument("--d", type=int, default=32, help="D of the per-element columns (default 32)")
    ap.add_argument("--no-cuda", action="store_true", help="skip the extension's CUDA kernels")
    ap.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    ap.add_argument("--planted", action="store_true", help="also compile the deliberately bad kernels (tests)")
    ap.add_argument("--jobs", type=int, default=None, help="processes compiling the Triton kernels (default: one per core)")
    args = ap.parse_args(argv)
    reports = []
    if not args.no_triton:
        print("compiling the Triton kernels (every config, every arch) ...", file=sys.stderr, flush=True)
        reports += triton_reports(tuple(args.arch), jobs=args.jobs)
    if args.planted:
        reports += planted_reports(args.arch[-1])
    if not args.no_cuda:
        found = cuda_reports(tuple(args.arch))
        if not found:
            print("no CUDA kernels in the extension (built without CUDA?)", file=sys.stderr)
        reports += found
    arch = 90 if 90 in args.arch else args.arch[0]
    preds = predict(reports, arch=arch)
    bank = predict(reports, arch=arch, m=BANK_SHAPE[0], k=BANK_SHAPE[1], dims=BANK_SHAPE[2],
                   grad_components=BANK_SHAPE[0])
    if args.json:
        print(json.dumps({"kernels": [dataclasses.asdict(r) for r in reports], "predictions": preds,
                          "bank_predictions": bank,
                          "model": {"rates": RATES, "machine": H100}}, indent=1))
        return 0
    print(f"## Kernels (per element columns at D = {args.d}; float32)\n")
    print(kernel_table(reports, args.d))
    print(f"\n## Predicted at M = K = 16384 on {H100['name']}: {H100['sms']} SMs at {H100['clock_hz'] / 1e9:.2f} GHz "
          f"(lower bounds; targets: forward <= {TARGETS['forward']}× floor, fwd+bwd <= {TARGETS['forward+backward']}×)\n")
    print(prediction_table(preds))
    print(f"\n## Predicted at a component bank's shape, M = {BANK_SHAPE[0]} queries × K = {BANK_SHAPE[1]} components "
          "(split-K; fill: the share of SMs a launch occupies, where below 1; the column backward over the "
          f"batch's {BANK_SHAPE[0]} components only)\n")
    print(prediction_table(bank))
    spilled = [f"{r.source}:{r.name}[{r.config}]@sm_{r.arch}" for r in reports if r.stack or r.local_ops]
    print(f"\nkernels using local memory: {len(spilled)}" + (f" ({', '.join(spilled)})" if spilled else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
