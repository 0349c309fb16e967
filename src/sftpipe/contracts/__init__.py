"""What each stage leaves on disk, typed and versioned: the only code that knows its file names and JSON keys.

- `data_dir`: the data dir `prepare` writes (manifest.json, the Arrow splits) and `train`/`eval` read.
- `run_dir`: the run dir `train` writes (config.yaml, run_manifest.json, checkpoints/, final/, logs/, eval/).
- `checkpoint`: one checkpoint dir: its files, how it is sealed (temp dir, fsync, rename, COMPLETE marker with
  sizes and digests) and verified, which ones are complete, retention, the trainer state.
- `model_dir`: sftpipe.json, the info file beside every model sftpipe writes (final/, checkpoints, merges).

Every JSON file here carries `format_version`. A file without one was written before versions existed and has
version 1's shape; a newer version than this sftpipe knows is refused with a message naming the file. This
package is the bottom layer: it imports config, errors and redact of sftpipe, nothing above them.
"""
