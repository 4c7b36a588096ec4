#!/usr/bin/env bash
# Usage: tools/without_compilers.sh COMMAND [ARG...]
# Runs COMMAND where no C or C++ compiler can be found, after showing that none can:
# - in a private mount namespace (root: unshare -m; otherwise a user namespace, unshare -rm), every
#   compiler driver (cc, gcc, g++-12, clang, x86_64-linux-gnu-gcc, ...) is deleted from each PATH
#   directory, /usr/bin and /usr/local/bin through an overlay, so the real disk is never touched;
# - gcc's own programs and files (cc1, cc1plus, collect2, crt*.o: /usr/lib/gcc, /usr/lib/gcc-cross,
#   /usr/libexec/gcc) are covered by empty read-only tmpfs mounts, so no leftover driver can work.
# Where no namespace can be made (a container without CAP_SYS_ADMIN), it says so and only takes the
# compilers off PATH. COMMAND sees PHI2CPU_TEST_NO_COMPILER=1 (full hiding) or =path (PATH only).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }

say() { echo "without_compilers: $*" >&2; }

is_compiler() {
  case "$1" in
    cc | c++ | gcc | g++ | cpp | c89 | c99 | clang | clang++ | clang-cpp | tcc | icc | icpc | icx | icpx) return 0 ;;
    *-cc | *-c++ | *-gcc | *-g++ | *-cpp | *-clang | *-clang++) return 0 ;;
    gcc-[0-9]* | g++-[0-9]* | cpp-[0-9]* | clang-[0-9]* | clang++-[0-9]* | clang-cpp-[0-9]*) return 0 ;;
    *-gcc-[0-9]* | *-g++-[0-9]* | *-cpp-[0-9]* | *-clang-[0-9]* | *-clang++-[0-9]*) return 0 ;;
  esac
  return 1
}

# The directories a compiler driver may be looked up in: PATH, the usual bin directories, LLVM's.
search_dirs() {
  local d
  { tr ':' '\n' <<<"$PATH"; printf '%s\n' /usr/bin /usr/local/bin /usr/lib/llvm-*/bin; } |
    while read -r d; do [ -n "$d" ] && [ -d "$d" ] && readlink -f "$d"; done | sort -u
}

compilers_in() {
  local f
  for f in "$1"/*; do
    if { [ -f "$f" ] || [ -L "$f" ]; } && is_compiler "$(basename "$f")"; then echo "$f"; fi
  done
}

gcc_internals=(/usr/lib/gcc /usr/lib/gcc-cross /usr/libexec/gcc /usr/local/lib/gcc /usr/local/libexec/gcc)

if [ "${PHI2CPU_NOCC_STAGE:-}" = "" ]; then
  if [ "$(id -u)" = 0 ]; then ns=(unshare --mount --propagation private); else ns=(unshare --mount --map-root-user --propagation private); fi
  if err=$("${ns[@]}" true 2>&1); then
    PHI2CPU_NOCC_STAGE=namespace exec "${ns[@]}" "$BASH" "$0" "$@"
  fi
  say "cannot make a private mount namespace (${ns[*]}: ${err:-failed}); the compilers are taken off"
  say "PATH only, so this run proves less: a compiler still exists at its absolute path"
  PHI2CPU_NOCC_STAGE=path
fi

removed=()
if [ "$PHI2CPU_NOCC_STAGE" = namespace ]; then
  scratch=$(mktemp -d)
  mount -t tmpfs tmpfs "$scratch"
  i=0
  while read -r dir; do
    mapfile -t found < <(compilers_in "$dir")
    [ ${#found[@]} -gt 0 ] || continue
    i=$((i + 1))
    mkdir "$scratch/up$i" "$scratch/work$i"
    if ! mount -t overlay overlay -o "lowerdir=$dir,upperdir=$scratch/up$i,workdir=$scratch/work$i" "$dir"; then
      say "cannot overlay $dir; giving up rather than leaving its compilers in place"
      exit 1
    fi
    rm -f "${found[@]}"
    removed+=("${found[@]}")
  done < <(search_dirs)
  for d in "${gcc_internals[@]}"; do
    if [ -d "$d" ]; then mount -t tmpfs -o ro,size=64k tmpfs "$d"; fi
  done
  export PHI2CPU_TEST_NO_COMPILER=1
else
  # A PATH of links to every program on it except the compilers.
  farm=$(mktemp -d)
  while read -r dir; do
    for f in "$dir"/*; do
      [ -x "$f" ] && [ ! -d "$f" ] || continue
      name=$(basename "$f")
      if is_compiler "$name"; then removed+=("$f"); elif [ ! -e "$farm/$name" ]; then ln -s "$f" "$farm/$name"; fi
    done
  done < <(tr ':' '\n' <<<"$PATH" | while read -r d; do [ -n "$d" ] && [ -d "$d" ] && echo "$d"; done)
  export PATH="$farm"
  export PHI2CPU_TEST_NO_COMPILER=path
fi
unset CC CXX CPP

# The proof, printed where the log shows it.
say "hidden: ${#removed[@]} compiler drivers: ${removed[*]:-none found}"
if [ "$PHI2CPU_NOCC_STAGE" = namespace ]; then
  for d in "${gcc_internals[@]}"; do [ -d "$d" ] && say "$d is now empty: [$(ls -A "$d")]"; done
fi
found=$(command -v cc gcc g++ c++ clang clang++ cpp || true)
say "command -v cc gcc g++ c++ clang clang++ cpp: ${found:-nothing found}"
[ -z "$found" ] || { say "a compiler is still on PATH"; exit 1; }
hello=$(mktemp -d)
printf '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n' >"$hello/hello.c"
compiles() { "$1" "$hello/hello.c" -o "$hello/hello" >"$hello/err" 2>&1 || [ -e "$hello/hello" ]; }
for c in cc gcc g++ c++ clang; do
  if compiles "$c"; then say "$c compiled hello.c: a compiler is still usable"; exit 1; fi
  say "compile hello.c with $c: fails ($(head -n 1 "$hello/err"))"
done
if [ "$PHI2CPU_NOCC_STAGE" = namespace ]; then
  for c in "${removed[@]}"; do
    if compiles "$c"; then say "$c compiled hello.c: a compiler is still usable"; exit 1; fi
  done
  say "compile hello.c with each of the ${#removed[@]} hidden paths: all fail ($(head -n 1 "$hello/err"))"
fi
rm -rf "$hello"

exec "$@"
