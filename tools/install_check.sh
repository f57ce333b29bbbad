#!/usr/bin/env bash
# Install carousel into a temporary prefix, build a program outside the tree
# with nothing but `pkg-config --cflags --libs carousel`, and run it without
# LD_LIBRARY_PATH (the .pc file carries an rpath). Exits non-zero on any failure.
#   tools/install_check.sh
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
# The build's output goes to $work/log, printed if any step fails (meson and
# ninja print their errors on stdout, so discarding it hid the reason).
finish() {
    status=$?
    if [ "$status" != 0 ]; then
        echo "install-check: FAILED (exit $status) at line ${failed_line:-?}; build output:" >&2
        cat "$work/log" >&2 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap 'failed_line=$LINENO' ERR
trap finish EXIT

meson setup "$work/build" "$src" --prefix "$work/prefix" -Dtests=disabled >>"$work/log" 2>&1
targets="libcarousel.so libcarousel.a tools/carousel-ckpt"
# With Open MPI found, the optional mpi library is installed too.
have_mpi=0
# (grep reads the whole list: with -q it could stop early, ninja would die of
# SIGPIPE, pipefail would call the mpi library absent, and the install that
# follows would then fail on the unbuilt library, as CI once saw.)
if ninja -C "$work/build" -t targets all | grep '^libcarousel-mpi\.so:' >/dev/null; then
    have_mpi=1
    targets="$targets libcarousel-mpi.so libcarousel-mpi.a"
fi
# shellcheck disable=SC2086
ninja -C "$work/build" $targets >>"$work/log" 2>&1
meson install -C "$work/build" --no-rebuild >>"$work/log" 2>&1

pc_dir=$(dirname "$(find "$work/prefix" -name carousel.pc | head -n 1)")
cat > "$work/app.c" <<'C'
/* Outside the tree: both include styles, a graph, a layer, a backward. */
#include <carousel.h>
#include <carousel/nn.h>
#include <stdio.h>

int main(void)
{
    cr_graph *g = cr_graph_init();
    cr_graph_use(g);
    cr_rng rng = cr_rng_seed(1);
    cr_params *ps = cr_params_init();
    cr_linear l = cr_linear_init(ps, "fc", 3, 2, true, CR_F64, &rng);
    cr_tensor *x = cr_ones(CR_F64, CR_SHAPE(4, 3));
    cr_backward(cr_sum(cr_tanh(cr_linear_forward(&l, x))));
    double g0 = cr_get_flat(l.weight->grad, 0);
    size_t n = cr_params_numel(ps);
    printf("install-check grad0=%.6f params=%zu\n", g0, n);
    cr_params_free(ps);
    cr_graph_free(g);
    return g0 == g0 && n == 8 ? 0 : 1;
}
C
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -o "$work/app" "$work/app.c" \
    $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs carousel)
env -u LD_LIBRARY_PATH "$work/app"
if [ "$have_mpi" = 1 ]; then
    cat > "$work/mpi_app.c" <<'C'
/* Outside the tree: the mpi module through pkg-config carousel-mpi. */
#include <carousel/cr_mpi.h>
#include <stdio.h>

int main(void)
{
    int first = -1, local = -1;
    bool ok = cr_mpi_split(8, 2, 1, &first, &local) && first == 4 && local == 4 && !cr_mpi_split(8, 3, 0, &first, &local);
    printf("install-check mpi split=%d,%d\n", first, local);
    return ok ? 0 : 1;
}
C
    # shellcheck disable=SC2046
    cc -std=c11 -Wall -Wextra -Werror -o "$work/mpi_app" "$work/mpi_app.c" \
        $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs carousel-mpi)
    env -u LD_LIBRARY_PATH "$work/mpi_app"
fi
echo "install-check: ok (prefix install, pkg-config, rpath)"
