# CMake toolchain file: cross-compile fedlora for 64-bit ARM (aarch64) on a
# Debian x86-64 host with the cross compiler (gcc-aarch64-linux-gnu) and the
# multiarch :arm64 -dev packages (dpkg --add-architecture arm64).
# deploy/cross-arm64.sh installs both and uses this file:
#
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#
# Tests run under qemu-user: CMAKE_CROSSCOMPILING_EMULATOR makes ctest prefix
# every test executable with qemu-aarch64 (no binfmt_misc registration is
# needed). The :arm64 libraries live in /usr/lib/aarch64-linux-gnu and the
# loader in /lib/ld-linux-aarch64.so.1, which is where qemu looks without -L.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(FL_CROSS_TRIPLE aarch64-linux-gnu)

set(CMAKE_C_COMPILER ${FL_CROSS_TRIPLE}-gcc)
find_program(FL_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(FL_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${FL_QEMU_AARCH64})
endif()

# Headers and libraries of the target come from the multiarch directories of
# the host's root; programs (protoc-c, the compiler) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${FL_CROSS_TRIPLE})
set(CMAKE_LIBRARY_ARCHITECTURE ${FL_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# pkg-config answers for the target: only the aarch64 .pc files.
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/${FL_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")
