#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC code (dapi/gen/) from proto/.
#
# Usage: scripts/gen_proto.sh [OUTPUT_DIR]      (default: dapi/gen)
# Env:   PYTHON  interpreter with grpcio-tools and mypy-protobuf (default: python)
#
# protoc emits imports rooted at the proto package ("from cosmos.base.v1beta1
# import coin_pb2"); those are rewritten to live under dapi.gen so the
# generated modules are an ordinary subpackage and cannot collide with other
# distributions that ship cosmos/* modules. google.protobuf imports stay as
# they are: they come from the protobuf runtime.
# The output is deterministic for a given set of tool versions, so CI can
# regenerate into a temporary directory and compare byte for byte.
set -euo pipefail

PYTHON="${PYTHON:-python}"
# Absolute, but without resolving symlinks: a venv's python is a symlink and
# only its own path makes it pick up the venv's packages.
if [[ "$PYTHON" == */* ]]; then
    PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
fi
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
proto_dir="$repo_root/proto"
out_arg="${1:-$repo_root/dapi/gen}"
mkdir -p "$out_arg"
out_dir="$(cd "$out_arg" && pwd)"

# The mypy plugins are console scripts installed next to the interpreter;
# protoc needs their path because the venv's bin/ may not be on PATH.
bin_dir="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
find_plugin() {
    if [[ -x "$bin_dir/$1" ]]; then
        echo "$bin_dir/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        echo "gen_proto.sh: $1 not found (install mypy-protobuf)" >&2
        exit 1
    fi
}
mypy_plugin="$(find_plugin protoc-gen-mypy)"
mypy_grpc_plugin="$(find_plugin protoc-gen-mypy_grpc)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
work="$tmp/out"
log="$tmp/protoc.log"
mkdir "$work"

# A fixed order keeps the protoc invocation (and thus its output) stable.
mapfile -t protos < <(cd "$proto_dir" && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)
if [[ ${#protos[@]} -eq 0 ]]; then
    echo "gen_proto.sh: no .proto files under $proto_dir" >&2
    exit 1
fi

# protoc's stderr goes to a log shown only on failure: mypy-protobuf reports
# every file it writes there.
(
    cd "$proto_dir"
    "$PYTHON" -m grpc_tools.protoc \
        -I . \
        --python_out="$work" \
        --grpc_python_out="$work" \
        --plugin=protoc-gen-mypy="$mypy_plugin" \
        --mypy_out="$work" \
        --plugin=protoc-gen-mypy_grpc="$mypy_grpc_plugin" \
        --mypy_grpc_out="$work" \
        "${protos[@]}" 2>"$log" || { cat "$log" >&2; exit 1; }
)

"$PYTHON" - "$work" <<'PY'
"""Post-process protoc output in place: package-relative imports, no empty grpc stubs, __init__.py files."""

import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
# Top-level proto packages we generate; anything else (google.*) is external.
top = sorted(p.name for p in root.iterdir() if p.is_dir())
alt = "|".join(map(re.escape, top))
# "from cosmos.base.v1beta1 import coin_pb2" -> "from dapi.gen.cosmos.base.v1beta1 import coin_pb2"
from_import = re.compile(rf"^(\s*from\s+)({alt})((?:\.\w+)*\s+import\s)", re.M)
# Dotted module paths ending in a generated module ("import cosmos.x.y_pb2",
# "cosmos.x.y_pb2.Coin" in stubs, "'cosmos.x.y_pb2'" in the builder call).
module_path = re.compile(rf"(?<![\w.])({alt})((?:\.\w+)*\.\w+_pb2(?:_grpc)?)\b")

service_stub = re.compile(r"^class \w+Stub\b", re.M)

for path in sorted(root.rglob("*")):
    if path.suffix not in (".py", ".pyi"):
        continue
    text = path.read_text()
    # The grpc plugins emit a stub module for every file; only files that
    # declare a service get one that contains anything.
    if path.name.endswith(("_pb2_grpc.py", "_pb2_grpc.pyi")) and not service_stub.search(text):
        path.unlink()
        continue
    text = from_import.sub(r"\1dapi.gen.\2\3", text)
    text = module_path.sub(r"dapi.gen.\1\2", text)
    path.write_text(text)

for directory in sorted({root, *(p for p in root.rglob("*") if p.is_dir())}):
    init = directory / "__init__.py"
    if not init.exists():
        init.write_text("" if directory != root else '"""Generated protobuf and gRPC code; see scripts/gen_proto.sh."""\n')
PY

# Replace the output wholesale so files of deleted .proto files disappear, but
# refuse to wipe a directory that holds anything we did not generate.
unexpected="$(find "$out_dir" -type f ! -name '*_pb2.py' ! -name '*_pb2.pyi' ! -name '*_pb2_grpc.py' \
    ! -name '*_pb2_grpc.pyi' ! -name '__init__.py' ! -path '*/__pycache__/*' | head -n 1)"
if [[ -n "$unexpected" ]]; then
    echo "gen_proto.sh: refusing to overwrite $out_dir: it contains $unexpected" >&2
    exit 1
fi
find "$out_dir" -mindepth 1 -delete
cp -R "$work"/. "$out_dir"/
