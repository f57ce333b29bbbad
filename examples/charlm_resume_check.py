# charlm's --save/--resume contract, run by meson test:
#   exact:   N steps in one run == N/2 steps, --save, --resume for the rest:
#            byte-identical checkpoints and the same summary (LSTM and GRU),
#            across the end of a pass over the text (where the state resets).
#   refuses: a missing, truncated, malformed or mismatched --resume file exits 1
#            with one line on stderr that starts "charlm: --resume", and runs
#            nothing (no summary line).
# usage: charlm_resume_check.py exact|refuses CHARLM WORKDIR
import json, os, struct, subprocess, sys

mode, exe, work = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(work, exist_ok=True)
# 31634 training chars / (32 x 64) = 15 chunks: step 15 starts a new pass
small = ['--steps', '20', '--hidden', '16', '--embed', '8', '--batch', '32', '--seq', '64', '--sample', '16',
         '--val-chunks', '2']
failures = []


def run(*args):
    r = subprocess.run([exe] + small + list(args), capture_output=True, text=True)
    return r


def summary(r):
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''
    return ' '.join(w for w in last.split() if not w.startswith('ms_per_step='))


def path(name):
    return os.path.join(work, name)


def check(what, ok, r=None):
    if not ok:
        failures.append(what)
        print('FAIL', what)
        if r is not None:
            print(r.stdout + r.stderr)
    else:
        print('ok  ', what)


def read_st(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def write_st(p, header, data, keep, rename=None):
    """Rewrite a safetensors file with the tensors `keep` (renamed by `rename`)."""
    rename = rename or {}
    meta = header.get('__metadata__')
    out, blob = {}, b''
    for name in keep:
        e = header[name]
        a, z = e['data_offsets']
        out[rename.get(name, name)] = {'dtype': e['dtype'], 'shape': e['shape'],
                                       'data_offsets': [len(blob), len(blob) + z - a]}
        blob += data[a:z]
    if meta is not None:
        out['__metadata__'] = meta
    h = json.dumps(out).encode()
    h += b' ' * (-len(h) % 8)
    open(p, 'wb').write(struct.pack('<Q', len(h)) + h + blob)


if mode == 'exact':
    for cell in ['lstm', 'gru']:
        full, half, rest = path(cell + '-full.st'), path(cell + '-half.st'), path(cell + '-rest.st')
        a = run('--cell', cell, '--save', full)
        b = run('--cell', cell, '--stop-at', '10', '--save', half)
        c = run('--cell', cell, '--resume', half, '--save', rest)
        check(cell + ': the three runs succeed', a.returncode == b.returncode == c.returncode == 0, c)
        check(cell + ': resumed from step 10', 'resumed=' in c.stdout and ' step=10' in c.stdout, c)
        same = os.path.exists(full) and os.path.exists(rest) and open(full, 'rb').read() == open(rest, 'rb').read()
        check(cell + ': the checkpoints are byte-identical', same)
        check(cell + ': the summaries agree', summary(a) == summary(c) and summary(a).startswith('demo=charlm '),
              c)
        check(cell + ': the half run differs (the test can fail)',
              open(full, 'rb').read() != open(half, 'rb').read())
else:
    good = path('good.st')
    r = run('--cell', 'lstm', '--save', good)
    check('a checkpoint to spoil', r.returncode == 0, r)
    header, data = read_st(good)
    names = [k for k in header if k != '__metadata__']
    blob = open(good, 'rb').read()
    open(path('truncated.st'), 'wb').write(blob[:len(blob) // 2])
    open(path('garbage.st'), 'wb').write(os.urandom(4096))
    open(path('empty.st'), 'wb').write(b'')
    write_st(path('no-head-bias.st'), header, data, [k for k in names if k != 'charlm.head.bias'])
    write_st(path('renamed.st'), header, data, names, {'charlm.head.weight': 'charlm.head.weights'})
    write_st(path('no-state.st'), header, data, [k for k in names if k != '__optim__.charlm.h'])
    evil = dict(header)
    evil['__metadata__'] = dict(header['__metadata__'], **{'charlm.cell': '\x1b[31mlstm'})
    write_st(path('evil-cell.st'), evil, data, names)
    nometa = dict(header)
    nometa['__metadata__'] = {k: v for k, v in header['__metadata__'].items() if not k.startswith('charlm.')}
    write_st(path('no-meta.st'), nometa, data, names)
    bad_state = dict(header)
    e = dict(header['__optim__.charlm.h'])
    bad_state['__optim__.charlm.h'] = dict(e, shape=[1, 16, 32])
    write_st(path('state-shape.st'), bad_state, data, names)

    cases = [  # (what, file, extra flags, a word the reason must contain)
        ('missing file', path('no-such.st'), [], 'no-such.st'),
        ('empty file', path('empty.st'), [], 'empty.st'),
        ('truncated file', path('truncated.st'), [], 'truncated.st'),
        ('random bytes', path('garbage.st'), [], 'garbage.st'),
        ('a missing parameter', path('no-head-bias.st'), [], 'charlm.head.bias'),
        ('a wrong name', path('renamed.st'), [], 'charlm.head.weight'),
        ('no carried state', path('no-state.st'), [], '__optim__.charlm.h'),
        ('carried state of another shape', path('state-shape.st'), [], '__optim__.charlm.h'),
        ('no charlm metadata', path('no-meta.st'), [], 'metadata'),
        ('a hostile cell name', path('evil-cell.st'), [], '(unknown)'),
        ('another cell', good, ['--cell', 'gru'], '--cell lstm'),
        ('another hidden size', good, ['--hidden', '24'], 'charlm.lstm.l0'),
        ('another layer count', good, ['--layers', '2'], 'charlm.lstm.l1'),
        ('another batch', good, ['--batch', '16'], '__optim__.charlm.h'),
        ('another seq', good, ['--seq', '32'], '--seq'),
        ('another text', good, ['--data', exe], 'another length'),
        ('a step past --steps', good, ['--steps', '10'], 'step 20'),
    ]
    for what, f, extra, word in cases:
        r = run('--cell', 'lstm', *extra, '--resume', f)
        lines = r.stderr.strip().splitlines()
        ok = (r.returncode == 1 and len(lines) == 1 and lines[0].startswith('charlm: --resume') and word in lines[0]
              and '\x1b' not in r.stderr and 'demo=charlm' not in r.stdout)
        check('refuses ' + what + (': ' + lines[0] if lines else ''), ok, r)

sys.exit(1 if failures else 0)
