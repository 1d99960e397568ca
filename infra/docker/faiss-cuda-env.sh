# Sourced (not run) before a process that imports the CUDA build of FAISS (faiss-cuda): the CUDA image puts it in
# /etc/profile.d (KubeRay starts Ray with `bash -lc`, a login shell), and benchmarks/gpu_check.sh sources it.
# Two settings that wheel needs; each is left alone where already set.
#
# LD_PRELOAD: faiss-cuda carries its own libstdc++ and exports it. Where the system's loads after it (torch loads
# it, and so does FAISS's preload of the CUDA libraries) the two mix and index_factory fails with std::bad_cast.
# Loaded first, the system's serves every library.
#
# OPENBLAS_CORETYPE: the wheel's OpenBLAS (0.3.15) does not know recent Xeons and falls back to its Prescott (SSE3)
# kernels: FAISS's CPU side (IVF assignment, PQ training, adding vectors) ran at 32 GFLOP/s on a Xeon with AMX,
# 109 with SkylakeX's kernels and 217 with faiss-cpu's OpenBLAS. The widest kernels this CPU runs are named here.
if [ -z "${LD_PRELOAD:-}" ]; then
    LD_PRELOAD=$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ {lib = $NF} END {print lib}')
    export LD_PRELOAD
fi
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512f /proc/cpuinfo; then
        export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo; then
        export OPENBLAS_CORETYPE=Haswell
    fi
fi
