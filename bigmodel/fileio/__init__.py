"""Files bigmodel writes (standard library only): atomic writes, output-path rules, stale temporaries.

- Every file is written to a temporary name beside it and renamed: a crash never leaves half a file.
  Temporary names carry the writer's process id (`.NAME.PID.XXXXXXXX.tmp`, folders `.NAME.PID.old`),
  so the next writer in that folder removes those of dead processes and never those of a live one.
- Output paths are checked before any work: an existing file is replaced only with --force; an
  existing folder only when every file in it is one bigmodel recorded as its own (a bundle's
  manifest lists its files, a Triton repository's marker its models) and --force is given; anything
  else (a run, a user's file beside the manifest, the current folder) is refused, naming the file.
- A replaced folder goes only once the new one is in place (one atomic exchange where the system
  has it); after a crash between two renames the next writer puts the old folder back.
- One writer per folder: `folder_lock` (fcntl) beside the run or bundle; a second writer is refused
  naming the holder's PID, and a dead holder's lock is taken over.
- The operating system's refusals (disk full, read-only, permission) become a one-line StorageError.
"""

from bigmodel.checksum import sha256_file  # noqa: F401  (re-exported: the writers' one import)
from bigmodel.fileio.atomic import (  # noqa: F401  (the package's API)
    LOCK_SUFFIX,
    STORAGE_ERRNOS,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    bigmodel_entry,
    check_writable,
    make_public_dir,
    make_temp_dir,
    os_refusal,
    remove_stale_temps,
    replace_dir,
    stale_temp,
    storage_error,
    temp_prefix,
    write_json,
)
from bigmodel.fileio.lock import folder_lock, lock_path  # noqa: F401
from bigmodel.fileio.owned import (  # noqa: F401
    MANIFEST_NAME,
    RUN_FILES,
    TRITON_MARKER,
    bundle_files,
    check_output_file,
    check_output_folder,
    check_output_folders,
    check_outside,
    foreign_files,
    holds_cwd,
    is_bundle,
    is_triton_repository,
    mark_triton_repository,
    triton_files,
)
