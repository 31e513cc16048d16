#!/usr/bin/env bash
# Regenerates launchpad/control/control_pb2.py from control.proto.
# Needs grpcio-tools. The generated runtime-version check is removed so that
# the module loads with any protobuf runtime from 5.27 on, not only the one
# whose protoc generated it.
set -euo pipefail
cd "$(dirname "$0")/../launchpad/control"
python -m grpc_tools.protoc -I. --python_out=. control.proto
python - <<'PY'
import re
path = "control_pb2.py"
text = open(path).read()
text = text.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
text = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\(.*?\)\n", "", text, flags=re.S)
open(path, "w").write(text)
PY
