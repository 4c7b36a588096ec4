# Cross-compile for 64-bit ARM Linux with Clang (its own arm_neon.h, Debian's aarch64 GCC cross
# libraries and linker); run the results under qemu-aarch64. Used by tests/test_portability.py.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER clang++)
set(CMAKE_CXX_COMPILER_TARGET aarch64-linux-gnu)
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
