# Sourced by the side-by-side benchmark scripts: `bench_bins PROFILE ARG...` fills the array `bins`
# with one janusflow binary per ARG. An ARG that is an executable file is used as it is; a git
# revision is built (cargo profile PROFILE: release or dev) in a worktree under /tmp sharing this
# checkout's target directory, so only the crate recompiles, and kept in /tmp/janusflow-bench-bin.
bench_bins() {
  local profile=$1 dir a rev out wt
  shift
  dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
  local target=${CARGO_TARGET_DIR:-$PWD/target}
  bins=()
  for a in "$@"; do
    if [ -x "$a" ] && [ -f "$a" ]; then
      bins+=("$a")
      continue
    fi
    rev=$(git rev-parse --short "$a^{commit}")
    out=/tmp/janusflow-bench-bin/janusflow-$profile-$rev
    if [ ! -x "$out" ]; then
      wt=/tmp/janusflow-bench-src-$rev
      [ -d "$wt" ] || git worktree add --detach "$wt" "$rev" >&2
      (cd "$wt" && CARGO_TARGET_DIR="$target" cargo build --profile "$profile" --bin janusflow >&2)
      mkdir -p /tmp/janusflow-bench-bin
      cp "$target/$dir/janusflow" "$out"
      git worktree remove --force "$wt"
    fi
    bins+=("$out")
  done
}
