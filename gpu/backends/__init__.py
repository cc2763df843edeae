"""Where the kernels run: `base` (the Backend protocol, the CuPy backend and `get_backend`), `cpu`
(the same .cu text built with g++ against the fiber shim in gpu/shim/) and `nvrtc` (compile checks and
resource usage through NVRTC, as CuPy compiles, without a GPU).
"""
