"""What the hostile-input tests share: a CLI call that must end in one line, and a saved
file's metadata rewritten."""
import json

import numpy as np

from minicaps import cli

MB = 1 << 20


def one_line_error(capsys, argv, bounded, memory=512 * MB, seconds=60):
    """Run the CLI under the limits: exit status 2 and one line on stderr, which is returned."""
    with bounded(memory=memory, seconds=seconds):
        code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def rewrite_meta(path, change):
    """The .npz at ``path`` (one the test wrote itself, so np.load is fine) with its JSON
    metadata changed by ``change(meta)``."""
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    meta = json.loads(members["meta"].tobytes())
    change(meta)
    members["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **members)
