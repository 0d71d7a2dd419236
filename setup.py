"""Builds the optional compiled extension ``sparsekern._C``.

The package works without it (reference and Triton backends). Environment:
  SPARSEKERN_SKIP_EXTENSION=1  build no extension at all
  MAX_JOBS                     parallel compile jobs (ninja)
  SPARSEKERN_SKIP_CUDA=1       no CUDA kernels even where torch has CUDA and nvcc is found
  TORCH_CUDA_ARCH_LIST         CUDA archs to compile for (default "8.0;9.0a")
  CUDA_HOME                    CUDA toolkit root (bin/nvcc, include/); found from nvcc otherwise

Sections below: common set-up | CPU kernels | CUDA kernels | the extension. Sources are
globbed, so a new kernel file in csrc/cpu/ (or csrc/cuda/) needs no edit here.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
ext_modules, cmdclass = [], {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


if not _flag("SPARSEKERN_SKIP_EXTENSION"):
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # ------------------------------------------------------------ common set-up
    # csrc/bindings.cpp is the only file that includes torch headers.
    sources = ["csrc/bindings.cpp"]
    extension_class = CppExtension
    # The torch version as bare tokens (bindings.cpp stringifies them): no shell quoting.
    # C++20 explicitly: the kernels use it, and older torch releases default to C++17.
    cxx_flags = ["-O3", "-std=c++20", f"-DSPARSEKERN_TORCH_VERSION={torch.__version__}"]
    nvcc_flags: list[str] = []  # set only when the CUDA kernels are built
    link_flags: list[str] = []

    # -------------------------------------------------------------- CPU kernels
    # Torch-free kernels; bsmm_avx2.cpp / bsmm_avx512.cpp pick their instruction set by pragma,
    # so no file-specific flag is needed, and the dispatcher chooses at run time.
    # -fopenmp: at::parallel_for (torch's thread pool, used by the binding) is OpenMP in torch.
    sources += _sources("csrc/cpu/*.cpp")
    cxx_flags += ["-fopenmp"]
    link_flags += ["-fopenmp"]

    # ------------------------------------------------------------- CUDA kernels
    # csrc/cuda/*.cu (torch-free) when torch has CUDA, nvcc is found and SPARSEKERN_SKIP_CUDA != 1;
    # bindings.cpp then compiles its CUDA section (SPARSEKERN_WITH_CUDA). A CPU-only torch has
    # no CUDA headers at all, so nothing CUDA is referenced without it.
    # TORCH_CUDA_ARCH_LIST is respected; default sm_80 (mma.sync, cp.async) and sm_90a.
    def _cuda_home():
        """The toolkit root (bin/nvcc, include/, lib64/). torch guesses it from the nvcc on
        PATH, which may be a wrapper script (/usr/local/bin/nvcc), so candidates are checked."""
        import shutil

        candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
        nvcc = shutil.which("nvcc")
        if nvcc:
            candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        candidates.append("/usr/local/cuda")
        for home in filter(None, candidates):
            home = os.path.realpath(home)
            if os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
                os.path.join(home, "include", "cuda_runtime.h")
            ):
                return home
        return None

    cuda_home = None
    if torch.version.cuda and not _flag("SPARSEKERN_SKIP_CUDA"):
        cuda_home = _cuda_home()
        if cuda_home is None:
            print("sparsekern: nvcc not found (set CUDA_HOME); building without the CUDA kernels")
    if cuda_home:
        from torch.utils import cpp_extension

        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # torch resolved it when imported
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        extension_class = cpp_extension.CUDAExtension
        sources += _sources("csrc/cuda/*.cu")
        # The arch list as bare tokens for built_with ("8.0/9.0a"): no ';' or space on a command line.
        archs = "/".join(os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split())
        cxx_flags += ["-DSPARSEKERN_WITH_CUDA", f"-DSPARSEKERN_CUDA_ARCHS={archs}"]
        nvcc_flags += ["-O3", "-std=c++20"]

    # ------------------------------------------------------------ the extension
    extra_compile_args = {"cxx": cxx_flags}
    if nvcc_flags:
        extra_compile_args["nvcc"] = nvcc_flags
    ext_modules.append(
        extension_class(
            "sparsekern._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=extra_compile_args,
            extra_link_args=link_flags,
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
