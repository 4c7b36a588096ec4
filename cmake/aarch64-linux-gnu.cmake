# Cross-compile for 64-bit ARM Linux (Debian's g++-aarch64-linux-gnu); run the results under
# qemu-aarch64. Used by .ci/run for the NEON kernel tests.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
