#!/usr/bin/env bash
# The runtime's AVX-512 kernel set, tested on a CPU without AVX-512: the kernels are built in a
# scratch copy of this tree with SIMDe's portable AVX-512 intrinsics (Debian/Ubuntu package
# libsimde-dev; SIMDE_INCLUDE=<dir holding simde/> for another copy), then the runtime's tests run
# there, every kernel set against the numpy reference as usual, now the AVX-512 one too. Slow
# kernels, the same integers and float bits: this checks the AVX-512 code's logic, not its speed.
# Extra arguments go to pytest (e.g. -k avx512).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
inc="${SIMDE_INCLUDE:-/usr/include}"
if [ ! -f "$inc/simde/x86/avx512.h" ]; then
    echo "error: SIMDe's headers are not in $inc/simde; install them (apt install libsimde-dev) or set SIMDE_INCLUDE" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# the working tree as it is (tracked and new files, not ignored ones), built artifacts left out
(cd "$root" && git ls-files -z --cached --others --exclude-standard | grep -zv '\.so$' |
    xargs -0 cp --parents -t "$work")
cd "$work"
# (setup.py goes on without the kernels if they fail to build: the check below catches that)
CFLAGS="-DBB_EMULATE_AVX512 -mavx2 -mfma -mpopcnt -Wno-psabi -I$inc" \
    python setup.py -q build_ext --inplace >build.log 2>&1
python - <<'PY' || { tail -n 30 build.log >&2; exit 1; }
import sys
import paddle_bibert.runtime.kernels as k
if not k.compiled_available():
    sys.exit(f"error: the emulated AVX-512 build failed ({k._IMPORT_ERROR}); its log follows")
if "avx512" not in k.available_isas():
    sys.exit("error: the emulated build does not offer the avx512 set (this CPU lacks AVX2/FMA?)")
print(f"kernels from {k._C.__file__}: {', '.join(k.available_isas())} (avx512 emulated)")
PY
python -m pytest -q -p no:cacheprovider tests/test_runtime.py tests/test_one_call.py "$@"
